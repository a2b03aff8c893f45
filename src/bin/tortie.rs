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
/// them): a background thread purges freed pages even while the process is idle; freed pages go
/// back to the system at once (`dirty_decay_ms:0`, `muzzy_decay_ms:0`: the operator's heap swings
/// after watch bursts, and the resident size is what an admin sees); one arena and small thread
/// caches, as the operator's threads are few and mostly idle. Measured by the footprint bench
/// (10 / 1k / 5k nodes): 25.3 / 70.6 / 136.1 MiB, against 40.8 / 82.4 / 149.0 MiB with two
/// arenas and a 1 s decay, for ~2 s more CPU over the whole run.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: ConfStr =
    ConfStr(c"background_thread:true,dirty_decay_ms:0,muzzy_decay_ms:0,narenas:1,tcache_max:1024".as_ptr());

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
