//! The one place the sim provider touches the disk: its world as a JSON file,
//! replaced atomically so a kill -9 at any instant leaves either the old or
//! the new world, never a torn one.

use super::world::{StateFile, StateFileHeader, World, STATE_FORMAT};
use crate::ProviderError;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

fn io_error<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ProviderError + 'a {
    move |source| ProviderError::Io { operation, path: path.to_path_buf(), source }
}

/// The directory holding `path` ("." for a bare file name).
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temporary file a new version is written to before the rename. Same
/// directory, so the rename is atomic; a leftover from a killed write is
/// simply overwritten by the next one.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "sim-world".into());
    directory_of(path).join(format!(".{name}.tmp"))
}

/// Reads the world at `path`; `Ok(None)` when there is no file yet.
pub fn read(path: &Path, now: i64) -> Result<Option<World>, ProviderError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read the sim state file", path)(e)),
    };
    let corrupt = |reason: String| ProviderError::CorruptState { path: path.to_path_buf(), reason };
    let header: StateFileHeader =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a sim world: {e}")))?;
    if header.format != STATE_FORMAT {
        return Err(ProviderError::UnsupportedStateFormat {
            path: path.to_path_buf(),
            found: header.format,
            supported: STATE_FORMAT,
        });
    }
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    World::from_state(state, now).map(Some).map_err(corrupt)
}

/// Serializes the world; done under the world lock, so it must stay cheap.
pub fn encode(world: &World) -> Vec<u8> {
    // Plain structs with string keys: serializing cannot fail.
    serde_json::to_vec(&world.to_state()).expect("the sim world always serializes to JSON")
}

/// Replaces the file at `path` with `bytes`: write a temporary file, fsync it,
/// rename it over the old one, fsync the directory so the rename is durable.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ProviderError> {
    let directory = directory_of(path);
    let temporary = temporary_path(path);
    let mut file = File::create(&temporary).map_err(io_error("create", &temporary))?;
    file.write_all(bytes).map_err(io_error("write", &temporary))?;
    file.sync_all().map_err(io_error("fsync", &temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(io_error("rename the new sim world over", path))?;
    File::open(&directory).and_then(|d| d.sync_all()).map_err(io_error("fsync the directory", &directory))?;
    Ok(())
}

/// Makes sure the directory for the state file exists.
pub fn create_directory(path: &Path) -> Result<(), ProviderError> {
    let directory = directory_of(path);
    fs::create_dir_all(&directory).map_err(io_error("create the directory", &directory))
}
