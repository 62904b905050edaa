//! An allocator that counts what is live, for the tests that bound memory. A test binary that
//! uses it declares `#[global_allocator] static ALLOCATOR: Counting = Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting live bytes and live allocations.
pub struct Counting;

/// Live bytes.
pub static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Live allocations: buffers of varying size come and go with connections, so what is kept per
/// request shows in the count before it shows in the bytes.
pub static BLOCKS: AtomicIsize = AtomicIsize::new(0);

/// The most bytes live at once since the last [`reset_peak`].
pub static PEAK: AtomicIsize = AtomicIsize::new(0);

/// Start measuring the peak from what is live now.
pub fn reset_peak() {
    PEAK.store(live_bytes(), Ordering::Relaxed);
}

/// The most bytes live at once since [`reset_peak`].
pub fn peak_bytes() -> isize {
    PEAK.load(Ordering::Relaxed)
}

/// Live bytes now.
pub fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Live allocations now.
pub fn live_blocks() -> isize {
    BLOCKS.load(Ordering::Relaxed)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        PEAK.fetch_max(live + layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grown = new_size as isize - layout.size() as isize;
        let live = LIVE.fetch_add(grown, Ordering::Relaxed);
        PEAK.fetch_max(live + grown, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
