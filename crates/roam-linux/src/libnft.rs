//! nftables transactions in process, through libnftables (the library the `nft` command
//! is built on; Debian's `nftables` package depends on `libnftables1`, so wherever `nft`
//! is, so is the library).
//!
//! Why: an `nft -f -` process per transaction costs ~2 ms on an idle machine and 10 to
//! 25 ms on a loaded one (fork, exec, dynamic linking, a cache dump of the table, and
//! the kernel's wait for an RCU grace period when the process closes its netlink
//! socket), and a move has three transactions on its critical path (the mover's held
//! entry, the peer's translation, the mover's release). Through the library the same
//! script is one `nft_run_cmd_from_buffer` on a socket that stays open: ~0.07 ms.
//!
//! The library is loaded at run time (`dlopen`, [`libloading`]): roam builds without its
//! headers, and a host without it falls back to the `nft` command ([`crate::nft`]).
//!
//! One thread per context, living in the plane's network namespace for its whole life:
//! the context's netlink socket belongs to the namespace its thread was in when the
//! socket was made, and the library may make another one (after an error) at any call.
//! The thread owns the context (libnftables contexts are not for concurrent use); calls
//! reach it over a channel.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use thiserror::Error;

/// The library's file name (its soname).
pub const LIBRARY: &str = "libnftables.so.1";

/// `NFT_CTX_DEFAULT`: a context with its netlink socket.
const NFT_CTX_DEFAULT: u32 = 0;
/// `NFT_CTX_OUTPUT_JSON` (libnftables(3)).
const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;

#[derive(Debug, Error)]
pub enum LibNftError {
    #[error("loading {LIBRARY}: {0}")]
    Load(String),
    #[error("entering network namespace {path}: {source}")]
    Netns { path: String, source: std::io::Error },
    #[error("libnftables could not make a context")]
    Context,
    /// The script holds a NUL byte (it cannot be handed to the library).
    #[error("nft script holds a NUL byte")]
    Nul,
    /// nft (or the kernel) refused the script; nothing of it was applied.
    #[error("{0}")]
    Refused(String),
    #[error("the libnftables thread is gone")]
    Gone,
}

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The library's functions roam uses, resolved once.
struct Api {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxFn,
    buffer_error: CtxFn,
    get_output: GetBuffer,
    get_error: GetBuffer,
    set_output_flags: SetFlags,
    run_cmd: RunCmd,
    /// Keeps the functions above mapped.
    _lib: libloading::Library,
}

impl Api {
    fn load() -> Result<Api, LibNftError> {
        let err = |e: libloading::Error| LibNftError::Load(e.to_string());
        // SAFETY: loading libnftables runs its initialisers, which only set up its own
        // state; the symbols are looked up with the C signatures libnftables(3)
        // documents, and the pointers are used while `_lib` keeps the library mapped.
        unsafe {
            let lib = libloading::Library::new(LIBRARY).map_err(err)?;
            Ok(Api {
                ctx_new: *lib.get::<CtxNew>(b"nft_ctx_new\0").map_err(err)?,
                ctx_free: *lib.get::<CtxFree>(b"nft_ctx_free\0").map_err(err)?,
                buffer_output: *lib.get::<CtxFn>(b"nft_ctx_buffer_output\0").map_err(err)?,
                buffer_error: *lib.get::<CtxFn>(b"nft_ctx_buffer_error\0").map_err(err)?,
                get_output: *lib
                    .get::<GetBuffer>(b"nft_ctx_get_output_buffer\0")
                    .map_err(err)?,
                get_error: *lib.get::<GetBuffer>(b"nft_ctx_get_error_buffer\0").map_err(err)?,
                set_output_flags: *lib.get::<SetFlags>(b"nft_ctx_output_set_flags\0").map_err(err)?,
                run_cmd: *lib.get::<RunCmd>(b"nft_run_cmd_from_buffer\0").map_err(err)?,
                _lib: lib,
            })
        }
    }
}

/// A context, owned by the thread that made it.
struct Context {
    api: Api,
    ctx: *mut c_void,
}

impl Context {
    fn new(api: Api) -> Result<Context, LibNftError> {
        // SAFETY: documented signatures; `ctx` is checked before use and freed once (Drop).
        unsafe {
            let ctx = (api.ctx_new)(NFT_CTX_DEFAULT);
            if ctx.is_null() {
                return Err(LibNftError::Context);
            }
            // Output and errors to buffers (read after each run), not stdout/stderr.
            (api.buffer_output)(ctx);
            (api.buffer_error)(ctx);
            Ok(Context { api, ctx })
        }
    }

    /// Runs `script` as one transaction: its output, or why it was refused.
    fn run(&mut self, script: &CStr, json: bool) -> Result<String, LibNftError> {
        // SAFETY: `ctx` is live (owned by self); the buffers returned are read before
        // the next call on the context, as libnftables(3) requires, and reading them
        // resets them.
        unsafe {
            (self.api.set_output_flags)(self.ctx, if json { NFT_CTX_OUTPUT_JSON } else { 0 });
            let rc = (self.api.run_cmd)(self.ctx, script.as_ptr());
            let take = |p: *const c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().trim().to_owned()
                }
            };
            let output = take((self.api.get_output)(self.ctx));
            let error = take((self.api.get_error)(self.ctx));
            if rc == 0 {
                Ok(output)
            } else if error.is_empty() {
                Err(LibNftError::Refused(format!(
                    "nft_run_cmd_from_buffer returned {rc}"
                )))
            } else {
                Err(LibNftError::Refused(error))
            }
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: made by nft_ctx_new, freed once.
        unsafe { (self.api.ctx_free)(self.ctx) }
    }
}

struct Job {
    script: CString,
    json: bool,
    reply: mpsc::SyncSender<Result<String, LibNftError>>,
}

/// libnftables in a thread of its own, in the given network namespace.
pub struct LibNft {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl LibNft {
    /// Loads the library and makes a context in `netns` (the caller's namespace if
    /// `None`). An error means: use the `nft` command instead.
    pub fn open(netns: Option<&Path>) -> Result<LibNft, LibNftError> {
        let ns = match netns {
            Some(path) => Some(std::fs::File::open(path).map_err(|source| LibNftError::Netns {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        let shown = netns.map(|p| p.display().to_string()).unwrap_or_default();
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::sync_channel::<Result<(), LibNftError>>(1);
        let thread = std::thread::Builder::new()
            .name("libnftables".into())
            .spawn(move || {
                let made = (|| {
                    if let Some(ns) = &ns {
                        use std::os::fd::AsRawFd;
                        // SAFETY: setns only reads the descriptor, which `ns` keeps open;
                        // it moves this thread alone, for its whole life.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            return Err(LibNftError::Netns {
                                path: shown,
                                source: std::io::Error::last_os_error(),
                            });
                        }
                    }
                    Context::new(Api::load()?)
                })();
                let mut ctx = match made {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in queue {
                    let _ = job.reply.send(ctx.run(&job.script, job.json));
                }
            })
            .map_err(|e| LibNftError::Load(format!("starting its thread: {e}")))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(LibNft {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(LibNftError::Gone)
            }
        }
    }

    /// Runs `script` (nft's language, as for `nft -f`) as one transaction. With `json`,
    /// the output (of a `list`) is nft's JSON, as `nft -j` prints it.
    pub fn run(&self, script: &str, json: bool) -> Result<String, LibNftError> {
        let script = CString::new(script).map_err(|_| LibNftError::Nul)?;
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or(LibNftError::Gone)?
            .send(Job { script, json, reply })
            .map_err(|_| LibNftError::Gone)?;
        answer.recv().map_err(|_| LibNftError::Gone)?
    }
}

impl Drop for LibNft {
    fn drop(&mut self) {
        // Closing the queue ends the thread, which frees the context.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_with_a_nul_byte_is_refused_before_the_library() {
        // Whether or not the library is here, the script never reaches it.
        if let Ok(lib) = LibNft::open(None) {
            assert!(matches!(lib.run("list\0tables", false), Err(LibNftError::Nul)));
        }
    }
}
