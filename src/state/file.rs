//! [`StateFile`]: a pool's state in a JSON file, written atomically (temporary file + rename).

use std::path::{Path, PathBuf};

use super::saved::{Remember, RestoreReport, SavedState, VERSION};
use crate::error::Error;

/// Where a pool's state is kept across restarts.
///
/// ```
/// use tower_gemini::KeyPool;
/// use tower_gemini::state::StateFile;
///
/// let dir = std::env::temp_dir().join(format!("state-doc-{}", std::process::id()));
/// let file = StateFile::new(dir.join("pool.json"));
/// let pool = KeyPool::from_keys(["test-key-0001"])?;
/// file.save(&pool)?;                         // periodically, and at shutdown
/// let restarted = KeyPool::from_keys(["test-key-0001"])?;
/// let report = file.restore(&restarted)?;   // at start; Ok(None) when there is no file yet
/// assert_eq!(report.unwrap().keys_restored, 1);
/// # std::fs::remove_dir_all(dir).ok();
/// # Ok::<(), tower_gemini::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file at `path` (its directory is created when first saved).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateFile { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write the pool's state: to a temporary file beside it, then renamed over it, so a crash
    /// mid-write never leaves a torn file.
    pub fn save(&self, pool: &impl Remember) -> Result<(), Error> {
        let state = pool.save();
        let text = serde_json::to_vec(&state)
            .map_err(|e| Error::config(format!("cannot serialise the pool's state: {e}")))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::config(format!(
                    "cannot create {} for the state file: {e}",
                    dir.display()
                ))
            })?;
        }
        let temporary = self.path.with_extension("tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .map_err(|e| {
                Error::config(format!(
                    "cannot write the state file {}: {e}",
                    self.path.display()
                ))
            })
    }

    /// Read the file into `pool`. `Ok(None)` if there is none yet. A file that cannot be
    /// read as a state (corrupt, another version) is renamed aside (`….corrupt-<ms>`) and
    /// reported as an error; the pool then starts fresh.
    pub fn restore(&self, pool: &impl Remember) -> Result<Option<RestoreReport>, Error> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::config(format!(
                    "cannot read the state file {}: {e}",
                    self.path.display()
                )));
            }
        };
        let parsed = serde_json::from_slice::<SavedState>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|state| {
                if state.version == VERSION {
                    Ok(state)
                } else {
                    Err(format!(
                        "version {} (this build reads {VERSION})",
                        state.version
                    ))
                }
            });
        match parsed {
            Ok(state) => {
                let report = pool.restore(&state);
                tracing::info!(
                    "state restored from {}: {} keys, {} new, {} dropped, {} project+model entries, {} resource owners",
                    self.path.display(),
                    report.keys_restored,
                    report.keys_new,
                    report.keys_dropped,
                    report.slots_restored,
                    report.pins_restored
                );
                Ok(Some(report))
            }
            Err(why) => {
                let aside = self.path.with_extension(format!(
                    "corrupt-{}",
                    jiff::Timestamp::now().as_millisecond()
                ));
                let moved = std::fs::rename(&self.path, &aside).is_ok();
                let message = format!(
                    "the state file {} is not a state this build can read ({why}); {}; starting fresh",
                    self.path.display(),
                    if moved {
                        format!("kept aside as {}", aside.display())
                    } else {
                        "it could not be moved aside".to_owned()
                    }
                );
                tracing::error!("{message}");
                Err(Error::config(message))
            }
        }
    }
}
