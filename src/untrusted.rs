//! Reading what a stranger may have written: every model file and every audio file comes from a
//! download or a drop. Only regular files are opened (a FIFO or a device would block or never
//! end), only up to a stated size, and a dependency that panics on malformed input is held at
//! the boundary so that the panic becomes an error.

use std::cell::Cell;
use std::fs::File;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Once;

use crate::error::{Error, Result};

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` is a regular file (on the web: a file the page mounted).
pub fn is_file(path: &Path) -> bool {
    #[cfg(target_arch = "wasm32")]
    return crate::mounted::is_file(path);
    #[cfg(not(target_arch = "wasm32"))]
    path.is_file()
}

/// Whether `path` is a folder (on the web: holds a file the page mounted).
pub fn is_dir(path: &Path) -> bool {
    #[cfg(target_arch = "wasm32")]
    return crate::mounted::is_dir(path);
    #[cfg(not(target_arch = "wasm32"))]
    path.is_dir()
}

/// A file opened for reading: from disk, or in a browser the bytes a page mounted or the app
/// stored ([`write_file`]).
pub enum Readable {
    File(File),
    #[cfg(target_arch = "wasm32")]
    Bytes(std::io::Cursor<Vec<u8>>),
}

impl Read for Readable {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Readable::File(f) => f.read(buf),
            #[cfg(target_arch = "wasm32")]
            Readable::Bytes(c) => c.read(buf),
        }
    }
}

impl std::io::Seek for Readable {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        match self {
            Readable::File(f) => f.seek(pos),
            #[cfg(target_arch = "wasm32")]
            Readable::Bytes(c) => c.seek(pos),
        }
    }
}

impl Readable {
    /// The length in bytes, where it can be had.
    pub fn byte_len(&self) -> Option<u64> {
        match self {
            Readable::File(f) => f.metadata().ok().map(|m| m.len()),
            #[cfg(target_arch = "wasm32")]
            Readable::Bytes(c) => Some(c.get_ref().len() as u64),
        }
    }
}

/// Opens `path` for reading if it is a regular file (in a browser: a mounted or stored file).
pub fn open_readable(path: &Path) -> Result<Readable> {
    #[cfg(target_arch = "wasm32")]
    if let Some(bytes) = crate::mounted::bytes(path) {
        return Ok(Readable::Bytes(std::io::Cursor::new(bytes.to_vec())));
    }
    open_regular(path).map(Readable::File)
}

/// Writes `bytes` as the file `path` (its folder must exist); in a browser it is kept in memory
/// with the mounted files, where every reader of this module finds it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::mounted::store(path, bytes.to_vec());
        Ok(())
    }
    #[cfg(not(target_arch = "wasm32"))]
    std::fs::write(path, bytes).map_err(io_error(path))
}

/// Opens `path` for reading if it is a regular file.
pub fn open_regular(path: &Path) -> Result<File> {
    if !std::fs::metadata(path).map_err(io_error(path))?.is_file() {
        return Err(Error::Input(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    File::open(path).map_err(io_error(path))
}

/// The whole of a regular file of at most `max_bytes`.
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    if let Some(bytes) = crate::mounted::bytes(path) {
        if bytes.len() as u64 > max_bytes {
            return Err(Error::Input(format!(
                "{}: {} bytes, more than the {max_bytes} a file of this kind may have",
                path.display(),
                bytes.len()
            )));
        }
        return Ok(bytes.to_vec());
    }
    let file = open_regular(path)?;
    let len = file.metadata().map_err(io_error(path))?.len();
    if len > max_bytes {
        return Err(Error::Input(format!(
            "{}: {len} bytes, more than the {max_bytes} a file of this kind may have",
            path.display()
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` as well: the file may grow while it is read.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::Input(format!(
            "{}: grew past {max_bytes} bytes while it was read",
            path.display()
        )));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String> {
    String::from_utf8(read_bounded(path, max_bytes)?)
        .map_err(|_| Error::Input(format!("{}: not UTF-8 text", path.display())))
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into `Err` with the panic's message. The panic hook stays
/// silent for panics caught here (on this thread only) and reports every other panic as before.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_becomes_its_message() {
        assert_eq!(catch_panic(|| 3), Ok(3));
        let err = catch_panic(|| -> u32 { panic!("bad {}", 7) }).unwrap_err();
        assert_eq!(err, "bad 7");
    }
}
