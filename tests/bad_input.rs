//! Bad input never hurts hvkvm: one table of hostile or mistaken command lines (files that are
//! devices, FIFOs, directories, huge sparse files or not what they claim; flags and values out
//! of range; configurations in every import format that are malformed or say nothing about
//! Hyper-V). Every row must end non-zero, quickly (refused at once, never blocked on a FIFO),
//! without a panic, and with a message naming the problem.
//!
//! Rows marked `kvm` get as far as the VM (their input is only refused while loading it); they
//! print `SKIP` when `/dev/kvm` cannot be opened. All others are refused before the host is
//! probed.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hvkvm::boot::payload::elf_from_code;

const HVKVM: &str = env!("CARGO_BIN_EXE_hvkvm");
/// A row must be refused within this time: nothing here should block or read much.
const ROW_LIMIT: Duration = Duration::from_secs(10);

/// One bad command line. `{d}` in an argument is the fixture directory.
struct Row {
    args: &'static [&'static str],
    /// Each must appear in stderr.
    expect: &'static [&'static str],
    /// Needs a usable /dev/kvm (the input is refused while building the VM).
    kvm: bool,
}

const fn row(args: &'static [&'static str], expect: &'static [&'static str]) -> Row {
    Row {
        args,
        expect,
        kvm: false,
    }
}

const fn kvm_row(args: &'static [&'static str], expect: &'static [&'static str]) -> Row {
    Row {
        args,
        expect,
        kvm: true,
    }
}

const ROWS: &[Row] = &[
    // ---- payload files ----
    row(
        &["run", "--payload", "/dev/zero"],
        &["payload '/dev/zero' is a character device", "regular file"],
    ),
    row(
        &["run", "--payload", "{d}/fifo"],
        &["payload '{d}/fifo' is a FIFO"],
    ),
    row(
        &["run", "--payload", "{d}"],
        &["payload '{d}' is a directory"],
    ),
    row(
        &["run", "--payload", "{d}/absent.elf"],
        &["cannot open the payload '{d}/absent.elf'", "No such file"],
    ),
    row(
        &["run", "--payload", "{d}/sparse-100g"],
        &[
            "payload '{d}/sparse-100g' is 100 GiB",
            "guest RAM (--memory 256): 256 MiB",
            "raise --memory",
        ],
    ),
    row(
        &["run", "--memory", "16", "--payload", "{d}/17m.elf"],
        &["is 17 MiB", "guest RAM (--memory 16): 16 MiB"],
    ),
    row(
        &["run", "--payload", "{d}/empty"],
        &["cannot load the payload", "missing \\x7fELF magic"],
    ),
    row(
        &["run", "--payload", "{d}/text.txt"],
        &["missing \\x7fELF magic"],
    ),
    row(
        &["run", "--payload", "{d}/elf32.elf"],
        &["not 64-bit little-endian"],
    ),
    row(
        &["run", "--payload", "{d}/dyn.elf"],
        &["not an executable (ET_EXEC)", "-static -no-pie"],
    ),
    row(
        &["run", "--payload", "{d}/arm.elf"],
        &["e_machine is not x86-64"],
    ),
    row(
        &["run", "--payload", "{d}/low.elf"],
        &["segment 0 at 0x8000..0x8001 is outside the payload area"],
    ),
    row(
        &["run", "--memory", "16", "--payload", "{d}/high.elf"],
        &[
            "segment 0 at 0x2000000..0x2000001 is outside the payload area",
            "--memory",
        ],
    ),
    row(
        &["run", "--payload", "{d}/huge-bss.elf"],
        &["outside the payload area"],
    ),
    row(
        &["run", "--payload", "{d}/entry.elf"],
        &["entry point 0x300000 is not inside any loaded segment"],
    ),
    row(
        &["run", "--payload", "{d}/overlap.elf"],
        &["segments 0 and 1 overlap"],
    ),
    row(
        &["run", "--payload", "{d}/truncated.elf"],
        &["corrupt ELF", "past the end of the file"],
    ),
    row(
        &["run", "--payload", "{d}/many-phdrs.elf"],
        &["program header size or count"],
    ),
    row(
        &[
            "run",
            "--cpus",
            "255",
            "--memory",
            "16",
            "--payload",
            "{d}/ok.elf",
        ],
        &["255 vCPU stacks of 64 KiB do not fit"],
    ),
    // ---- kernel and initrd files ----
    row(
        &["run", "--kernel", "/dev/zero"],
        &["kernel '/dev/zero' is a character device"],
    ),
    row(
        &["run", "--kernel", "{d}/fifo"],
        &["kernel '{d}/fifo' is a FIFO"],
    ),
    row(
        &["run", "--kernel", "{d}/sparse-100g"],
        &["kernel '{d}/sparse-100g' is 100 GiB", "--memory 256"],
    ),
    row(
        &["run", "--kernel", "{d}/ok.elf", "--initrd", "{d}/fifo"],
        &["initrd '{d}/fifo' is a FIFO"],
    ),
    row(
        &["run", "--kernel", "{d}/ok.elf", "--initrd", "/dev/null"],
        &["initrd '/dev/null' is a character device"],
    ),
    row(
        &[
            "run",
            "--kernel",
            "{d}/ok.elf",
            "--initrd",
            "{d}/sparse-300m",
        ],
        &[
            "initrd '{d}/sparse-300m' is 300 MiB",
            "left of the guest RAM (--memory 256) after the kernel",
        ],
    ),
    kvm_row(
        &[
            "run",
            "--timeout",
            "5",
            "--memory",
            "16",
            "--kernel",
            "{d}/high.elf",
        ],
        &[
            "kernel segment 0 at 0x2000000..0x2000001 lies outside guest RAM",
            "raise --memory",
        ],
    ),
    kvm_row(
        &["run", "--timeout", "5", "--kernel", "{d}/text.txt"],
        &["cannot load the kernel image"],
    ),
    // ---- flags and values ----
    row(
        &["run", "--cpus", "0", "--payload", "{d}/ok.elf"],
        &["'--cpus <N>'", "0 is not in 1..=255"],
    ),
    row(
        &["run", "--cpus", "256", "--payload", "{d}/ok.elf"],
        &["256 is not in 1..=255"],
    ),
    row(
        &["run", "--cpus", "two", "--payload", "{d}/ok.elf"],
        &["invalid value 'two' for '--cpus <N>'"],
    ),
    row(
        &["run", "--memory", "8", "--payload", "{d}/ok.elf"],
        &["8 is not in 16..=61440"],
    ),
    row(
        &["run", "--memory", "99999999", "--payload", "{d}/ok.elf"],
        &["99999999 is not in 16..=61440"],
    ),
    row(
        &["run", "--timeout", "0", "--payload", "{d}/ok.elf"],
        &["'0' is not a positive number of seconds"],
    ),
    row(
        &["run", "--timeout", "-1", "--payload", "{d}/ok.elf"],
        &["'-1' is not a positive number of seconds"],
    ),
    row(
        &["run", "--timeout", "nan", "--payload", "{d}/ok.elf"],
        &["'nan' is not a positive number of seconds"],
    ),
    row(
        &["run", "--timeout", "inf", "--payload", "{d}/ok.elf"],
        &["'inf' is not a positive number of seconds"],
    ),
    row(
        &["run", "--timeout", "1e30", "--payload", "{d}/ok.elf"],
        &["'1e30' seconds is more than the longest limit, 1000000000 s"],
    ),
    row(
        &["run", "--cpu", "potato", "--payload", "{d}/ok.elf"],
        &["unknown CPU model 'potato'", "'baseline' or 'host'"],
    ),
    row(
        &[
            "run",
            "--host-quirks",
            "sometimes",
            "--payload",
            "{d}/ok.elf",
        ],
        &["'--host-quirks <MODE>'"],
    ),
    row(
        &["run", "--backend", "hyper", "--payload", "{d}/ok.elf"],
        &["invalid value 'hyper' for '--backend", "auto, kernel, user"],
    ),
    row(
        &[
            "run",
            "--on-guest-crash",
            "panic",
            "--payload",
            "{d}/ok.elf",
        ],
        &["invalid value 'panic' for '--on-guest-crash"],
    ),
    row(
        &["run", "--hv", "hv-bogus", "--payload", "{d}/ok.elf"],
        &["unknown Hyper-V flag 'hv-bogus'"],
    ),
    row(
        &["run", "--hv", "hv-spinlocks=12", "--payload", "{d}/ok.elf"],
        &["hv-spinlocks", "at least 0xfff"],
    ),
    row(
        &["run", "--profile", "windows-99", "--payload", "{d}/ok.elf"],
        &["unknown profile 'windows-99'", "known profiles"],
    ),
    row(
        &["run", "--payload", "{d}/ok.elf", "--kernel", "{d}/ok.elf"],
        &["'--payload <FILE>' cannot be used with '--kernel <FILE>'"],
    ),
    row(
        &["run", "--payload", "{d}/ok.elf", "--initrd", "{d}/ok.elf"],
        &["'--payload <FILE>' cannot be used with '--initrd <FILE>'"],
    ),
    row(
        &["run"],
        &["required arguments were not provided", "--payload <FILE>"],
    ),
    row(
        &["run", "--payload"],
        &["a value is required for '--payload <FILE>'"],
    ),
    row(&["frobnicate"], &["unrecognized subcommand 'frobnicate'"]),
    row(&["probe", "--bogus"], &["unexpected argument '--bogus'"]),
    kvm_row(
        &[
            "run",
            "--timeout",
            "5",
            "--hv",
            "hv-stimer",
            "--payload",
            "{d}/ok.elf",
        ],
        &["hv-stimer"],
    ),
    kvm_row(
        &[
            "run",
            "--timeout",
            "5",
            "--serial-file",
            "{d}/no/such/dir/serial.txt",
            "--payload",
            "{d}/ok.elf",
        ],
        &["cannot create the serial output file '{d}/no/such/dir/serial.txt'"],
    ),
    // ---- bench ----
    row(
        &["bench", "time-read", "--iterations", "0"],
        &["0 is not in 1..=100000000"],
    ),
    row(
        &["bench", "time-read", "--iterations", "many"],
        &["invalid value 'many' for '--iterations <N>'"],
    ),
    row(
        &["bench", "time-read", "--plot", "{d}/no/such/dir/plot.svg"],
        &[
            "cannot create the plot file '{d}/no/such/dir/plot.svg'",
            "writable path",
        ],
    ),
    row(
        &["bench", "frobnicate"],
        &["unrecognized subcommand 'frobnicate'"],
    ),
    // ---- hv import: files, in every format ----
    row(
        &["hv", "import", "--format", "qemu", "{d}/absent.txt"],
        &["cannot open the qemu configuration '{d}/absent.txt'"],
    ),
    row(
        &["hv", "import", "--format", "qemu", "/dev/zero"],
        &["qemu configuration '/dev/zero' is a character device"],
    ),
    row(
        &["hv", "import", "--format", "libvirt", "{d}/fifo"],
        &["libvirt configuration '{d}/fifo' is a FIFO"],
    ),
    row(
        &["hv", "import", "--format", "kubevirt", "{d}/sparse-5g"],
        &[
            "kubevirt configuration '{d}/sparse-5g' is 5 GiB",
            "configuration file: 4 MiB",
        ],
    ),
    row(
        &["hv", "import", "--format", "proxmox", "{d}/binary.conf"],
        &["proxmox configuration '{d}/binary.conf' is not UTF-8 text"],
    ),
    row(
        &["hv", "import", "--format", "libvirt", "{d}"],
        &["libvirt configuration '{d}' is a directory"],
    ),
    row(
        &["hv", "import", "--format", "yaml", "{d}/no-hv.yaml"],
        &[
            "invalid value 'yaml' for '--format <FORMAT>'",
            "qemu, libvirt, kubevirt, proxmox",
        ],
    ),
    row(
        &["hv", "import", "--format", "qemu"],
        &["required arguments were not provided", "<FILE>"],
    ),
    // ---- hv import: contents, in every format ----
    row(
        &["hv", "import", "--format", "qemu", "{d}/no-hv.qemu"],
        &["no Hyper-V settings found in this qemu input", "hv-* flags"],
    ),
    row(
        &["hv", "import", "--format", "qemu", "{d}/bogus.qemu"],
        &["unknown Hyper-V flag 'hv-warp'"],
    ),
    row(
        &["hv", "import", "--format", "qemu", "{d}/bad-value.qemu"],
        &["invalid value 'lots' for hv-spinlocks"],
    ),
    row(
        &["hv", "import", "--format", "libvirt", "{d}/no-hv.xml"],
        &["no Hyper-V settings found", "<features><hyperv>"],
    ),
    row(
        &["hv", "import", "--format", "libvirt", "{d}/malformed.xml"],
        &["malformed XML"],
    ),
    row(
        &["hv", "import", "--format", "libvirt", "{d}/maybe.xml"],
        &["state='maybe' must be on or off"],
    ),
    row(
        &[
            "hv",
            "import",
            "--format",
            "libvirt",
            "{d}/empty-hyperv.xml",
        ],
        &["no Hyper-V settings found in this libvirt input"],
    ),
    row(
        &["hv", "import", "--format", "kubevirt", "{d}/no-hv.yaml"],
        &["no Hyper-V settings under spec.domain"],
    ),
    row(
        &["hv", "import", "--format", "kubevirt", "{d}/malformed.yaml"],
        &["malformed YAML"],
    ),
    row(
        &["hv", "import", "--format", "kubevirt", "{d}/pod.yaml"],
        &["not a KubeVirt"],
    ),
    row(
        &["hv", "import", "--format", "kubevirt", "{d}/warp.yaml"],
        &["unknown KubeVirt", "spec.domain.features.hyperv.warp"],
    ),
    row(
        &["hv", "import", "--format", "proxmox", "{d}/linux.conf"],
        &[
            "no Hyper-V settings found in this proxmox input",
            "Windows ostype",
        ],
    ),
    row(
        &["hv", "import", "--format", "proxmox", "{d}/text.txt"],
        &["expected 'key: value'"],
    ),
    row(
        &["hv", "import", "--format", "proxmox", "{d}/empty"],
        &["empty Proxmox config"],
    ),
    // ---- host descriptions (--host, baseline) ----
    row(
        &["hv", "explain", "--host", "/dev/zero"],
        &["host description '/dev/zero' is a character device"],
    ),
    row(
        &["hv", "explain", "--host", "{d}/fifo"],
        &["host description '{d}/fifo' is a FIFO"],
    ),
    row(
        &["hv", "explain", "--host", "{d}/sparse-5g"],
        &["host description '{d}/sparse-5g' is 5 GiB", "4 MiB"],
    ),
    row(
        &["hv", "explain", "--host", "{d}/absent.json"],
        &["cannot open the host description '{d}/absent.json'"],
    ),
    row(
        &["hv", "explain", "--host", "{d}/malformed.json"],
        &["is not a valid host description", "EOF while parsing"],
    ),
    row(
        &["hv", "explain", "--host", "{d}/not-host.json"],
        &["is not a host description", "hvkvm probe --json"],
    ),
    row(
        &["hv", "baseline", "/dev/null"],
        &["host description '/dev/null' is a character device"],
    ),
    row(
        &["hv", "baseline"],
        &["required arguments were not provided", "<PROBE>"],
    ),
    row(
        &["hv", "explain", "--hv", "hv-stimer"],
        &[
            "hv-stimer requires hv-synic and hv-time",
            "add hv-synic,hv-time",
        ],
    ),
    row(
        &["hv", "explain", "--hv", "hv-vendor-id=waytoolongvendorid"],
        &["hold 12; shorten it"],
    ),
    row(
        &["hv", "export", "--format", "libvirt", "--profile", "nope"],
        &["unknown profile 'nope'"],
    ),
];

/// Payload segments: (paddr, data, memsz).
fn elf(entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
    let (ehdr, phdr) = (64usize, 56usize);
    let mut out = vec![0u8; ehdr + phdr * segments.len()];
    out[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&(ehdr as u64).to_le_bytes());
    out[52..54].copy_from_slice(&(ehdr as u16).to_le_bytes());
    out[54..56].copy_from_slice(&(phdr as u16).to_le_bytes());
    out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    for (i, (paddr, data, memsz)) in segments.iter().enumerate() {
        let offset = out.len() as u64;
        let ph = ehdr + i * phdr;
        out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
        out[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        out[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

struct Fixtures(PathBuf);

impl Drop for Fixtures {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn fixtures() -> Fixtures {
    let dir = std::env::temp_dir().join(format!("hvkvm-bad-input-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let fx = Fixtures(dir.clone());
    let write = |name: &str, data: &[u8]| fs::write(dir.join(name), data).unwrap();
    let sparse = |name: &str, len: u64| {
        fs::File::create(dir.join(name))
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    let ok = elf_from_code(0x20_0000, &[0xf4]);
    write("ok.elf", &ok);
    write("empty", b"");
    write("text.txt", b"this is not an ELF file\n");
    let mut elf32 = ok.clone();
    elf32[4] = 1;
    write("elf32.elf", &elf32);
    let mut dynamic = ok.clone();
    dynamic[16] = 3; // ET_DYN
    write("dyn.elf", &dynamic);
    let mut arm = ok.clone();
    arm[18] = 183; // EM_AARCH64
    write("arm.elf", &arm);
    write("low.elf", &elf_from_code(0x8000, &[0xf4]));
    write("high.elf", &elf_from_code(0x200_0000, &[0xf4]));
    write(
        "huge-bss.elf",
        &elf(0x20_0000, &[(0x20_0000, &[0xf4], 1 << 40)]),
    );
    write("entry.elf", &elf(0x30_0000, &[(0x20_0000, &[0xf4], 1)]));
    write(
        "overlap.elf",
        &elf(
            0x20_0000,
            &[(0x20_0000, &[0xf4], 0x100), (0x20_0080, &[0x90], 1)],
        ),
    );
    let mut truncated = elf(0x20_0000, &[(0x20_0000, &[0x90; 64], 64)]);
    truncated.truncate(truncated.len() - 10);
    write("truncated.elf", &truncated);
    let mut many = ok.clone();
    many[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
    write("many-phdrs.elf", &many);
    let mut big = ok.clone();
    big.resize(17 << 20, 0);
    write("17m.elf", &big);
    sparse("sparse-100g", 100 << 30);
    sparse("sparse-5g", 5 << 30);
    sparse("sparse-300m", 300 << 20);
    write("binary.conf", b"\xff\xfe\x00\x01ostype: win11\n");
    write(
        "no-hv.qemu",
        b"qemu-system-x86_64 -m 2048 -cpu host -smp 2\n",
    );
    write("bogus.qemu", b"-cpu host,hv-relaxed,hv-warp\n");
    write("bad-value.qemu", b"-cpu host,hv-spinlocks=lots\n");
    write(
        "no-hv.xml",
        b"<domain type='kvm'><name>vm</name></domain>\n",
    );
    write("malformed.xml", b"<domain><features><hyperv>\n");
    write(
        "maybe.xml",
        b"<domain><features><hyperv><relaxed state='maybe'/></hyperv></features></domain>\n",
    );
    write(
        "empty-hyperv.xml",
        b"<domain><features><hyperv/></features></domain>\n",
    );
    write(
        "no-hv.yaml",
        b"spec:\n  domain:\n    cpu:\n      cores: 2\n",
    );
    write("malformed.yaml", b"spec: [unclosed\n");
    write("pod.yaml", b"kind: Pod\n");
    write(
        "warp.yaml",
        b"spec:\n  domain:\n    features:\n      hyperv:\n        warp: {}\n",
    );
    write("linux.conf", b"ostype: l26\ncores: 2\nmemory: 2048\n");
    write("malformed.json", b"{\n");
    write("not-host.json", b"{\"probe\": 1}\n");
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "mkfifo (coreutils) is needed to test FIFO inputs"
    );
    fx
}

fn subst(s: &str, dir: &Path) -> String {
    s.replace("{d}", &dir.display().to_string())
}

/// Runs one row; returns stderr, exit code and time, killing hvkvm after `ROW_LIMIT`.
fn run(args: &[String]) -> (String, Option<i32>, Duration, bool) {
    let mut child = Command::new(HVKVM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hvkvm");
    let mut pipe = child.stderr.take().expect("stderr piped");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let (status, killed) = loop {
        if let Some(status) = child.try_wait().expect("wait for hvkvm") {
            break (status, false);
        }
        if start.elapsed() > ROW_LIMIT {
            let _ = child.kill();
            break (child.wait().expect("wait for hvkvm"), true);
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    (
        reader.join().unwrap_or_default(),
        status.code(),
        elapsed,
        killed,
    )
}

#[test]
fn every_bad_input_is_refused_at_once_with_a_message_naming_it() {
    assert!(ROWS.len() >= 40, "the table must keep at least 40 rows");
    let fx = fixtures();
    let kvm = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop);
    let mut failures = Vec::new();
    let mut ran = 0;
    for row in ROWS {
        let args: Vec<String> = row.args.iter().map(|a| subst(a, &fx.0)).collect();
        let line = format!("hvkvm {}", args.join(" "));
        if row.kvm {
            if let Err(e) = &kvm {
                println!("SKIP: {line}: /dev/kvm is not usable: {e}");
                continue;
            }
        }
        ran += 1;
        let (stderr, code, elapsed, killed) = run(&args);
        let mut problems = Vec::new();
        if killed {
            problems.push(format!(
                "still running after {ROW_LIMIT:?} (blocked or reading without bound)"
            ));
        }
        match code {
            None if !killed => problems.push("killed by a signal".to_string()),
            Some(0) => problems.push("exit status 0".to_string()),
            Some(101) => problems.push("exit status 101 (a panic)".to_string()),
            _ => {}
        }
        if stderr.contains("panicked at") {
            problems.push("panicked".to_string());
        }
        for want in row.expect {
            let want = subst(want, &fx.0);
            if !stderr.contains(&want) {
                problems.push(format!("stderr lacks {want:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{line}\n  exit {code:?} after {elapsed:?}: {}\n  stderr: {}",
                problems.join("; "),
                stderr.trim().replace('\n', "\n          ")
            ));
        }
    }
    println!("{ran} of {} rows ran", ROWS.len());
    assert!(
        failures.is_empty(),
        "{} of {ran} bad inputs were not handled as they must be:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
