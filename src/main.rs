//! The `understudy` binary: parse the command line and hand over to `cli::run`.

/// mimalloc keeps and reuses the large blocks training allocates every step; the system
/// allocator returns them to the kernel and pays page faults again (measured: half the time).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    understudy::cli::main()
}
