//! `tortie`: the operator and the command-line tool.

use clap::Parser;

/// jemalloc, not the C library's malloc: the operator runs for months and its heap swings with
/// what it watches (a burst of watch events, a pass over every node). glibc keeps freed memory in
/// per-thread arenas, so the resident size stays at its highest mark; jemalloc returns unused
/// pages to the system a moment after they are freed (see [`MALLOC_CONF`]).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the environment overrides
/// them): a background thread purges freed pages on time even while the process is idle; freed
/// pages go back to the system after 1 s (`dirty_decay_ms`), at once unmapped rather than left
/// for the kernel to reclaim lazily (`muzzy_decay_ms:0`, so that the resident size shows it);
/// two arenas, as the operator's threads are few and mostly idle.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: ConfStr =
    ConfStr(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2".as_ptr());

/// A C string pointer that may be shared between threads (it points to a constant).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[repr(transparent)]
pub struct ConfStr(*const std::ffi::c_char);

// SAFETY: the pointer is to a `'static` constant that nothing writes.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
unsafe impl Sync for ConfStr {}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tortie::cli::Cli::parse();
    match cli.run().await {
        Ok(code) => code,
        Err(e) if e.is::<tortie::cli::ReaderGone>() => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tortie: {}", tortie::cli::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
