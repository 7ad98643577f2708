//! Locking that survives a panic: the elements' streaming threads, publisher threads and
//! inference workers share state behind mutexes, and a panic in one of them (caught at the
//! GStreamer boundary) must not turn every later lock into a second panic.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the data if another thread panicked while holding it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
