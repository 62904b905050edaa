//! What the pool remembers, beyond one process's memory (the start of the `state` module the
//! design plans: the `Store` boundary, Redis and the class → state table come next).
//!
//! - [`SavedState`]: a pool's state, saved with [`KeyPool::save`](crate::KeyPool::save) and taken
//!   back with [`KeyPool::restore`](crate::KeyPool::restore), matched by fingerprint.
//! - [`StateFile`]: that state in a file, written atomically, read at start; a corrupt file is
//!   reported and set aside, never fatal.

mod file;
mod snapshot;

pub use file::StateFile;
pub use snapshot::{RestoreReport, SavedState, VERSION};
