//! The `understudy` binary: parse the command line and hand over to `cli::run`.

/// mimalloc keeps and reuses the large blocks training allocates every step; the system
/// allocator returns them to the kernel and pays page faults again (measured: half the time).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v3): milliseconds before freed memory goes back to
/// the OS; -1 keeps it. A training step frees and reallocates the same large buffers every few
/// hundred milliseconds, and returning them made the kernel zero fresh pages on every step
/// (measured: 28 % of a tiny SFT step in `clear_page_erms`; about 8 % faster without it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // Safety: setting an option is thread-safe and only affects later purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    understudy::cli::main()
}
