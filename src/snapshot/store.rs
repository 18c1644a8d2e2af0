//! Writing snapshots atomically and reading them as hostile input.
//!
//! Atomicity: every data file of a snapshot carries a generation prefix unique to that
//! snapshot (`<gen>-vcpu-0.json`, …). They are written and fsynced first; the manifest is
//! then written to a temporary name, fsynced and renamed over `manifest.json`, which is the
//! commit point; the directory is fsynced; only then are the previous generation's files
//! removed. A crash before the rename leaves the previous manifest and all its files intact
//! (plus stray new files, removed by the next snapshot into that directory); a crash after it
//! leaves the new snapshot complete.
//!
//! Reading: the manifest's size is checked before it is read, its checksum (first line)
//! before it is parsed, its version before its body is interpreted, and its values
//! ([`Manifest::validate`]) before anything is allocated; each file's size is checked against
//! the manifest before it is read and its checksum before it is parsed.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use super::format::{
    valid_name, FileEntry, Manifest, MAGIC, MANIFEST, MAX_MANIFEST_BYTES, MAX_STATE_FILE_BYTES,
};
use super::{hex, SnapshotError, VERSION};
use crate::memory::{ram_file, GuestMemory};

/// Builds one snapshot in a directory; nothing is visible until [`SnapshotWriter::commit`].
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    generation: String,
    files: Vec<FileEntry>,
    written: Vec<PathBuf>,
    committed: bool,
}

impl SnapshotWriter {
    /// Prepares `dir`: created if missing; an existing directory must be empty or hold an
    /// hvkvm snapshot (which the new one replaces at commit).
    pub fn create(dir: &Path) -> Result<Self, SnapshotError> {
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(SnapshotError::io("create the directory", dir))?
            }
            Err(e) => return Err(SnapshotError::io("inspect", dir)(e)),
            Ok(m) if !m.is_dir() => return Err(SnapshotError::TargetInUse(dir.into())),
            Ok(_) => {
                let manifest = dir.join(MANIFEST);
                let is_snapshot = manifest.is_file() && read_header(&manifest).is_ok();
                let empty = fs::read_dir(dir)
                    .map_err(SnapshotError::io("list", dir))?
                    .next()
                    .is_none();
                if !is_snapshot && !empty {
                    return Err(SnapshotError::TargetInUse(dir.into()));
                }
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let generation = format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id());
        Ok(SnapshotWriter {
            dir: dir.into(),
            generation,
            files: Vec::new(),
            written: Vec::new(),
            committed: false,
        })
    }

    fn new_file(
        &mut self,
        role: &str,
        ext: &str,
    ) -> Result<(String, PathBuf, File), SnapshotError> {
        let name = format!("{}-{role}.{ext}", self.generation);
        debug_assert!(valid_name(&name));
        let path = self.dir.join(&name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(SnapshotError::io("create", &path))?;
        self.written.push(path.clone());
        Ok((name, path, file))
    }

    /// Writes `value` as the JSON file of `role`.
    pub fn add_json<T: Serialize>(&mut self, role: &str, value: &T) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec(value).map_err(|e| SnapshotError::Invalid {
            file: role.into(),
            problem: format!("cannot encode: {e}"),
        })?;
        let (name, path, mut file) = self.new_file(role, "json")?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(SnapshotError::io("write", &path))?;
        self.files.push(FileEntry {
            role: role.into(),
            name,
            size: bytes.len() as u64,
            sha256: hex(&Sha256::digest(&bytes)),
        });
        Ok(())
    }

    /// Writes guest RAM as the sparse `ram` file.
    pub fn add_ram(&mut self, mem: &GuestMemory) -> Result<ram_file::RamDigest, SnapshotError> {
        let (name, path, file) = self.new_file("ram", "bin")?;
        let digest = ram_file::save(mem, &file)
            .and_then(|d| file.sync_all().map(|()| d))
            .map_err(SnapshotError::io("write guest RAM to", &path))?;
        self.files.push(FileEntry {
            role: "ram".into(),
            name,
            size: digest.size,
            sha256: hex(&digest.sha256),
        });
        Ok(digest)
    }

    /// Makes the snapshot current: writes the manifest (with the file list) atomically, then
    /// removes files of the snapshot it replaced. Returns the directory.
    pub fn commit(mut self, mut manifest: Manifest) -> Result<PathBuf, SnapshotError> {
        manifest.files = std::mem::take(&mut self.files);
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::Invalid {
            file: MANIFEST.into(),
            problem: format!("cannot encode: {e}"),
        })?;
        let header = format!(
            "{MAGIC} v{VERSION} sha256={}\n",
            hex(&Sha256::digest(&body))
        );
        let tmp = self
            .dir
            .join(format!(".{}-{MANIFEST}.tmp", self.generation));
        let final_path = self.dir.join(MANIFEST);
        {
            let mut f = File::create(&tmp).map_err(SnapshotError::io("create", &tmp))?;
            self.written.push(tmp.clone());
            f.write_all(header.as_bytes())
                .and_then(|()| f.write_all(&body))
                .and_then(|()| f.sync_all())
                .map_err(SnapshotError::io("write", &tmp))?;
        }
        fs::rename(&tmp, &final_path).map_err(SnapshotError::io("rename into place", &tmp))?;
        self.committed = true;
        sync_dir(&self.dir)?;
        // The commit point has passed: anything not named by the new manifest is an older
        // generation (or a crashed attempt's leftovers) and goes.
        let keep: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name != MANIFEST && !keep.contains(&name.as_ref()) && is_ours(&name) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(self.dir.clone())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.committed {
            for path in &self.written {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// Whether `name` is a file some hvkvm snapshot writer created (`<hex gen>-<role>.<ext>` or a
/// temporary manifest): the only files a commit may delete.
fn is_ours(name: &str) -> bool {
    let base = name.strip_prefix('.').unwrap_or(name);
    let Some((generation, rest)) = base.split_once('-') else {
        return false;
    };
    !generation.is_empty()
        && generation.bytes().all(|b| b.is_ascii_hexdigit())
        && (rest.ends_with(".json") || rest.ends_with(".bin") || rest.ends_with(".tmp"))
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SnapshotError::io("sync", dir))
}

/// Reads the manifest's first line: `(version, sha256 hex)`.
fn read_header(path: &Path) -> Result<(u32, String, Vec<u8>), SnapshotError> {
    let foreign = |problem: &str| SnapshotError::Foreign {
        path: path.into(),
        problem: problem.into(),
    };
    let meta = fs::metadata(path).map_err(SnapshotError::io("open", path))?;
    if !meta.is_file() {
        return Err(foreign("it is not a regular file"));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(foreign("it is larger than any hvkvm manifest"));
    }
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes))
        .map_err(SnapshotError::io("read", path))?;
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Err(foreign("it has no header line"));
    };
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| foreign("bad header"))?;
    let mut words = header.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(foreign("its first word is not 'hvkvm-snapshot'"));
    }
    let version = words
        .next()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| foreign("its header has no version"))?;
    let sum = words
        .next()
        .and_then(|s| s.strip_prefix("sha256="))
        .ok_or_else(|| foreign("its header has no checksum"))?
        .to_string();
    Ok((version, sum, bytes[newline + 1..].to_vec()))
}

/// A snapshot opened for restore: its manifest verified and validated.
#[derive(Debug)]
pub struct SnapshotReader {
    dir: PathBuf,
    manifest: Manifest,
}

impl SnapshotReader {
    /// Opens the snapshot in `dir`.
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(MANIFEST);
        if !path.exists() {
            return Err(SnapshotError::Foreign {
                path: dir.into(),
                problem: "it has no manifest.json".into(),
            });
        }
        let (version, sum, body) = read_header(&path)?;
        if version > VERSION {
            return Err(SnapshotError::NewerFormat {
                path,
                found: version,
            });
        }
        if version == 0 {
            return Err(SnapshotError::Foreign {
                path,
                problem: "format version 0 does not exist".into(),
            });
        }
        if hex(&Sha256::digest(&body)) != sum {
            return Err(SnapshotError::Damaged {
                file: MANIFEST.into(),
                problem: "its contents do not match the checksum in its first line".into(),
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|e| SnapshotError::Invalid {
                file: MANIFEST.into(),
                problem: format!("not a version-{VERSION} manifest: {e}"),
            })?;
        if manifest.version != version {
            return Err(SnapshotError::Invalid {
                file: MANIFEST.into(),
                problem: format!(
                    "the header says version {version}, the body {}",
                    manifest.version
                ),
            });
        }
        manifest.validate()?;
        Ok(SnapshotReader {
            dir: dir.into(),
            manifest,
        })
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The snapshot's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, role: &str) -> Result<&FileEntry, SnapshotError> {
        self.manifest
            .file(role)
            .ok_or_else(|| SnapshotError::Invalid {
                file: MANIFEST.into(),
                problem: format!("no '{role}' file is listed"),
            })
    }

    /// Opens the file of `entry`, checking it is a regular file of the listed size.
    fn open_checked(&self, entry: &FileEntry) -> Result<File, SnapshotError> {
        let path = self.dir.join(&entry.name);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SnapshotError::Damaged {
                file: entry.name.clone(),
                problem: "the file is missing".into(),
            },
            _ => SnapshotError::io("open", &path)(e),
        })?;
        let meta = file
            .metadata()
            .map_err(SnapshotError::io("inspect", &path))?;
        if !meta.is_file() {
            return Err(SnapshotError::Damaged {
                file: entry.name.clone(),
                problem: "it is not a regular file".into(),
            });
        }
        if meta.len() != entry.size {
            return Err(SnapshotError::Damaged {
                file: entry.name.clone(),
                problem: format!(
                    "it has {} bytes, the manifest says {} (truncated or replaced)",
                    meta.len(),
                    entry.size
                ),
            });
        }
        Ok(file)
    }

    /// Reads, verifies and parses the JSON file of `role`.
    pub fn read_json<T: DeserializeOwned>(&self, role: &str) -> Result<(T, String), SnapshotError> {
        let entry = self.entry(role)?;
        let file = self.open_checked(entry)?;
        let mut bytes = Vec::with_capacity(entry.size.min(MAX_STATE_FILE_BYTES) as usize);
        file.take(entry.size.min(MAX_STATE_FILE_BYTES))
            .read_to_end(&mut bytes)
            .map_err(SnapshotError::io("read", self.dir.join(&entry.name)))?;
        if hex(&Sha256::digest(&bytes)) != entry.sha256 {
            return Err(SnapshotError::Damaged {
                file: entry.name.clone(),
                problem: "its contents do not match the manifest's checksum".into(),
            });
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Invalid {
            file: entry.name.clone(),
            problem: format!("cannot parse: {e}"),
        })?;
        Ok((value, entry.name.clone()))
    }

    /// Fills freshly allocated guest RAM from the `ram` file and verifies its checksum.
    pub fn load_ram(&self, mem: &GuestMemory) -> Result<ram_file::RamDigest, SnapshotError> {
        let entry = self.entry("ram")?;
        let file = self.open_checked(entry)?;
        if ram_file::ram_size(mem) != entry.size {
            return Err(SnapshotError::Invalid {
                file: entry.name.clone(),
                problem: format!(
                    "it has {} bytes, the restored VM has {} bytes of RAM",
                    entry.size,
                    ram_file::ram_size(mem)
                ),
            });
        }
        let digest = ram_file::load(mem, &file).map_err(SnapshotError::io(
            "read guest RAM from",
            self.dir.join(&entry.name),
        ))?;
        if hex(&digest.sha256) != entry.sha256 {
            return Err(SnapshotError::Damaged {
                file: entry.name.clone(),
                problem: "guest RAM does not match the manifest's checksum".into(),
            });
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::format::{HostIdentity, SavedConfig, SnapshotKind};

    fn manifest(cpus: u32) -> Manifest {
        Manifest {
            format: MAGIC.into(),
            version: VERSION,
            hvkvm_version: "test".into(),
            created_unix: 0,
            kind: SnapshotKind::SameHost,
            migration_blockers: Vec::new(),
            host: HostIdentity {
                machine_id: "m".into(),
                cpu_model: None,
                kvm_module: None,
                tsc_khz: None,
            },
            guest_tsc_khz: 1,
            config: SavedConfig {
                cpus,
                memory_mib: 16,
                boot: "t".into(),
                pit: false,
                nested: false,
                cpuid: vec![Vec::new(); cpus as usize],
                hyperv: None,
                extra_ports: Vec::new(),
                extra_msrs: Vec::new(),
            },
            files: Vec::new(),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hvkvm-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn write(d: &Path, tag: u64) {
        let mem = crate::memory::allocate(16).unwrap();
        crate::memory::Bytes::write_obj(&mem, tag, crate::memory::GuestAddress(0x3000)).unwrap();
        let mut w = SnapshotWriter::create(d).unwrap();
        w.add_json("vm", &serde_json::json!({"tag": tag})).unwrap();
        w.add_json("vcpu-0", &serde_json::json!({"tag": tag}))
            .unwrap();
        w.add_ram(&mem).unwrap();
        w.commit(manifest(1)).unwrap();
    }

    #[test]
    fn replacing_a_snapshot_keeps_only_the_new_files() {
        let d = dir("replace");
        write(&d, 1);
        write(&d, 2);
        let r = SnapshotReader::open(&d).unwrap();
        let (v, _): (serde_json::Value, _) = r.read_json("vm").unwrap();
        assert_eq!(v["tag"], 2);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 4, "manifest + 3 files");
        let mem = crate::memory::allocate(16).unwrap();
        r.load_ram(&mem).unwrap();
        let tag: u64 =
            crate::memory::Bytes::read_obj(&mem, crate::memory::GuestAddress(0x3000)).unwrap();
        assert_eq!(tag, 2);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_uncommitted_snapshot_leaves_the_previous_one_intact() {
        let d = dir("crash");
        write(&d, 1);
        {
            let mut w = SnapshotWriter::create(&d).unwrap();
            w.add_json("vm", &serde_json::json!({"tag": 9})).unwrap();
            // Dropped without commit, as when hvkvm fails half way.
        }
        // A crash (no Drop at all) leaves stray files: simulate one.
        fs::write(d.join("abc123-vm.json"), b"{}").unwrap();
        let r = SnapshotReader::open(&d).unwrap();
        let (v, _): (serde_json::Value, _) = r.read_json("vm").unwrap();
        assert_eq!(v["tag"], 1);
        write(&d, 3);
        assert!(
            !d.join("abc123-vm.json").exists(),
            "leftovers go at the next commit"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn refuses_to_write_into_a_foreign_directory() {
        let d = dir("foreign");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("notes.txt"), b"mine").unwrap();
        let e = SnapshotWriter::create(&d).unwrap_err();
        assert!(matches!(e, SnapshotError::TargetInUse(_)), "{e}");
        assert!(d.join("notes.txt").exists());
        let _ = fs::remove_dir_all(&d);
    }

    /// Damage of every kind is refused with the file named.
    #[test]
    fn damaged_snapshots_are_refused_naming_the_file() {
        let d = dir("damage");
        write(&d, 5);
        let m = SnapshotReader::open(&d).unwrap().manifest().clone();
        let name = |role: &str| m.file(role).unwrap().name.clone();
        let flip = |file: &Path, at: u64| {
            let mut bytes = fs::read(file).unwrap();
            let i = (at as usize).min(bytes.len() - 1);
            bytes[i] ^= 0x01;
            fs::write(file, bytes).unwrap();
        };
        let expect = |what: &str, needle: &str| {
            let e = SnapshotReader::open(&d).and_then(|r| {
                r.read_json::<serde_json::Value>("vm")?;
                r.read_json::<serde_json::Value>("vcpu-0")?;
                r.load_ram(&crate::memory::allocate(16).unwrap())?;
                Ok(())
            });
            let e = e.expect_err(what).to_string();
            assert!(e.contains(needle), "{what}: {e}");
        };
        for role in ["vm", "vcpu-0"] {
            let f = d.join(name(role));
            let orig = fs::read(&f).unwrap();
            flip(&f, 3);
            expect(role, &name(role));
            fs::write(&f, &orig).unwrap();
        }
        // RAM: a flipped data byte, a flipped hole byte, a truncated file.
        let ram = d.join(name("ram"));
        let orig = fs::read(&ram).unwrap();
        flip(&ram, 0x3000);
        expect("ram data", "does not match");
        fs::write(&ram, &orig).unwrap();
        flip(&ram, 0x5000);
        expect("ram hole", "does not match");
        fs::write(&ram, &orig[..orig.len() / 2]).unwrap();
        expect("ram truncated", "truncated");
        fs::write(&ram, &orig).unwrap();
        // Manifest: a flipped body byte, a damaged header, a newer version, not ours.
        let mf = d.join(MANIFEST);
        let orig_m = fs::read(&mf).unwrap();
        flip(&mf, orig_m.len() as u64 - 10);
        expect("manifest body", "manifest.json");
        fs::write(&mf, &orig_m).unwrap();
        let text = String::from_utf8(orig_m.clone()).unwrap();
        fs::write(&mf, text.replacen("v1 ", "v2 ", 1)).unwrap();
        expect("newer", "newer hvkvm");
        fs::write(&mf, text.replacen("hvkvm-snapshot", "qemu-savevm", 1)).unwrap();
        expect("foreign", "is not an hvkvm snapshot");
        fs::remove_file(&mf).unwrap();
        expect("no manifest", "has no manifest.json");
        fs::write(&mf, &orig_m).unwrap();
        SnapshotReader::open(&d).unwrap();
        fs::remove_file(d.join(name("vcpu-0"))).unwrap();
        expect("missing", "missing");
        let _ = fs::remove_dir_all(&d);
    }
}
