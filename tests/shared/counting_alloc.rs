//! A global allocator that counts allocations, for the tests that check a path never allocates. A
//! test binary opts in with `#[path = "shared/counting_alloc.rs"] mod counting_alloc;` (it replaces
//! that binary's allocator, so it is not part of `common`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

/// Allocations made so far by the whole test binary.
#[allow(dead_code)]
pub static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Bytes allocated and not yet freed by the whole test binary.
#[allow(dead_code)]
pub static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialised and without a destructor, so reading it never allocates and never fails,
    // even while the thread is being torn down.
    static ON_THIS_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Allocations made so far by the calling thread. A synchronous path (a pick, a route) is checked
/// with this rather than [`ALLOCATIONS`]: the test harness's own thread allocates while a test runs
/// (it records the test it has just started), and the process-wide count would include that.
#[allow(dead_code)]
pub fn on_this_thread() -> usize {
    ON_THIS_THREAD.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        let _ = ON_THIS_THREAD.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
