//! The `user-sync` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

/// The worker allocates and frees many small buffers per API call and per
/// statement; glibc's allocator was a fifth of its CPU time in the pipeline
/// bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    user_sync::cli::main()
}
