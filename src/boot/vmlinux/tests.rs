//! Unit tests of the parent module.

use super::*;

/// A tiny ELF64 x86-64 executable: header, one PT_LOAD header, 4096 pattern bytes.
/// The compressed vectors below were made from exactly these bytes with the commands the
/// kernel build uses (piped input, so sizes unknown to the compressor):
/// `gzip -n -9`, `xz --check=crc32 --x86 --lzma2=dict=32MiB`, `lzma -9`, `lz4 -l -9`,
/// `zstd -22 --ultra`.
fn fake_vmlinux() -> Vec<u8> {
    let body: Vec<u8> = (0..4096u32)
        .map(|i| ((i * 7 + i / 251) & 0xff) as u8)
        .collect();
    let total = (ELF64_EHDR_SIZE + ELF64_PHDR_SIZE + body.len()) as u64;
    let mut v = Vec::new();
    v.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&ET_EXEC.to_le_bytes());
    v.extend_from_slice(&EM_X86_64.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes()); // e_version
    v.extend_from_slice(&0x100_0000u64.to_le_bytes()); // e_entry
    v.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    v.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 1, 64, 0, 0] {
        // e_ehsize e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
        v.extend_from_slice(&half.to_le_bytes());
    }
    v.extend_from_slice(&1u32.to_le_bytes()); // p_type PT_LOAD
    v.extend_from_slice(&5u32.to_le_bytes()); // p_flags R+X
    for quad in [
        0,
        0xffff_ffff_8100_0000,
        0x100_0000,
        total,
        total,
        0x20_0000u64,
    ] {
        v.extend_from_slice(&quad.to_le_bytes());
    }
    v.extend_from_slice(&body);
    assert_eq!(v.len() as u64, total);
    v
}

const GZ: &[&str] = &[
    "1f8b0800000000000203ab77f57163626464800126063b06280f4c3930600207060ba0a4035c112baa74e37f2080e9af",
    "108008c26806060508c5ce272aa3ac656861efe61b129d9459505ed7da3379d6c215ebb7ed3d72fad2cd07cfdf7dfdc3",
    "cc252821afa66b62ede419101e979a535cd5d8d13f6dee92d59b761e387eeeea9dc7af3efef8cfc62b22ada469606ee7",
    "ea131c9598915f56dbd23d69e682e5ebb6ee397ceae28dfbcfde7ef9cdc429202ea7aa636ce5e8e11f169b925d54d9d0",
    "de3775cee2551b77ec3f76f6caed472f3f7cffc7ca232ca5a8a16f66ebe21d1499909e575ad3dc3571c6fc656bb7ec3e",
    "74f2c2f57b4fdf7cfec5c8c12f26aba26d64e9e0ee171a939c555851dfd63b65f6a2951bb6ef3b7ae6f2ad872fde7ffb",
    "cbc22d24a9a0ae676ae3ec1518119f965b52ddd43961fabca56b36ef3a78e2fc35aa1974f7c9eb4f3f8754400ed218a1",
    "47408e88a48d3d204744d2c61e90232269630fc81191b4b107e48848dad8037244246dec0139229236f6801c11491b7b",
    "408e88a48d3d204744d2c61e9023aed38208c811d7694104e488ebb4200292da310200173915c678100000",
];
const XZ: &[&str] = &[
    "fd377a585a0000016922de360201040021011a0001c980b3e01077014f5d003f914584683d89a6da8acc93e24ef1e9e1",
    "e8f0007d9d960f44546d934d0c7fd9a09f627fe78b8caefb08070d481652daaa1e01dd02e7706fa8256fc1ff0d69c79d",
    "62ee8efceb7cd363a9f6b4acdb09564c0c394b1ea74bffed22270f2ef97b778cfb9adada3455415b253e4c1d8ffa07d6",
    "d0b2be86b12fff09a91f6474022085e8bb9f508e789e488b2ff5424266eb80a917578cd99330d302ff35c05d745e10b9",
    "3ad12527071c86b723df97a8c0c7882683bda6547235fa45e29e12e6c91f320569b492370e37bc40627ded89f95ad144",
    "63efa7ff12733bc57e246ad6f3769c576d1da7d9c7c4fde3c734d58bf952f73764481454eca7287571875ff0aa72130c",
    "18ea33f9a1a7a53e860f7bc9301836b9fbae8b4dd7754352b917ca3521e391bf4925d8bae2d4e7cbd41721fdfaa0b2b4",
    "f0fb97631a180aebee913ebb058d28f7e1582786492e74d648fea11e7e400000173915c60001e702f82000002fd44bc9",
    "3e300d8b020000000001595a",
];
const LZMA: &[&str] = &[
    "5d00000004ffffffffffffffff003f914584683d89a6da8acc93e24ef1e9e1e8f0007d9d960f44546d934d0c7fd9a09f",
    "627fe78b8caefb08070d481652daaa1e01dd02e7706fa8256fc1ff0d69c79d62ee8efceb7cd363a9f6b4acdb09564c0c",
    "394b1ea74bffed22270f2ef97b778cfb9adada3455415b253e4c1d8ffa07d6d0b2be86b12fff09a91f6474022085e8bb",
    "9f508e789e488b2ff5424266eb80a917578cd99330d302ff35c05d745e10b93ad12527071c86b723df97a8c0c7882683",
    "bda6547235fa45e29e12e6c91f320569b492370e37bc40627ded89f95ad14463efa7ff12733bc57e246ad6f3769c576d",
    "1da7d9c7c4fde3c734d58bf952f73764481454eca7287571875ff0aa72130c18ea33f9a1a7a53e860f7bc9301836b9fb",
    "ae8b4dd7754352b917ca3521e391bf4925d8bae2d4e7cbd41721fdfaa0b2b4f0fb97631a180aebee913ebb058d28f7e1",
    "582786492e74d648fea1c7cb2bffffc5da2400",
];
const LZ4: &[&str] = &[
    "02214c18b9010000847f454c460201010001004302003e000e000107002e40000100754000380001004025001a051f00",
    "5481ffffffff400048781000000800320000200700ffeb070e151c232a31383f464d545b626970777e858c939aa1a8af",
    "b6bdc4cbd2d9e0e7eef5fc030a11181f262d343b424950575e656c737a81888f969da4abb2b9c0c7ced5dce3eaf1f8ff",
    "060d141b222930373e454c535a61686f767d848b9299a0a7aeb5bcc3cad1d8dfe6edf4fb020910171e252c333a41484f",
    "565d646b727980878e959ca3aab1b8bfc6cdd4dbe2e9f0f7fe050c131a21282f363d444b525960676e757c838a91989f",
    "a6adb4bbc2c9d0d7dee5ecf3fa01080f161d242b323940474e555c636a71787f868d949ba2a9b0b7bec5ccd3dae1e8ef",
    "f6fd040b121920272e353c434a51585f666d747b828990979ea5acb3bac1c8cfd64900365fdde4ebf2f949019a0f9201",
    "3b0f49019a0fdb02d20f4901030fdb02d20f4901030fdb02d20f4901030fdb02d20f4901030fdb02d20f4901030fdb02",
    "d20f4901030fdb02d20f4901030edb020fda09d60edb020fda09d60edb020fda09d60fb50cde0649010fb50cde064901",
    "0fb50cde0649010f92013850edf4fb0209",
];
const ZSTD: &[&str] = &[
    "28b52ffd0488950b0094117f454c460201010002003e0040003800010040050081ff781020070e151c232a31383f464d",
    "545b626970777e858c939aa1a8afb6bdc4cbd2d9e0e7eef5fc030a11181f262d343b424950575e656c737a81888f969d",
    "a4abb2b9c0c7ced5dce3eaf1f8ff060d141b222930373e454c535a61686f767d848b9299a0a7aeb5bcc3cad1d8dfe6ed",
    "f4fb020910171e252c333a41484f565d646b727980878e959ca3aab1b8bfc6cdd4dbe2e9f0f7fe050c131a21282f363d",
    "444b525960676e757c838a91989fa6adb4bbc2c9d0d7dee5ecf3fa01080f161d242b323940474e555c636a71787f868d",
    "949ba2a9b0b7bec5ccd3dae1e8eff6fd040b121920272e353c434a51585f666d747b828990979ea5acb3bac1c8cfd6dd",
    "e4ebf2f92ca801cf85b1d6ff0d60276c5a0c310c81244046708cf0ff3f56f4015da545c53dd5a52aab6a978a3b95dbaa",
    "56551655ef2a572aed552daad256e6ac62ca496f0c59e9e2329519e8fdbaba03759d095756c04544effb03f49a3609",
];

fn unhex(lines: &[&str]) -> Vec<u8> {
    let s: String = lines.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The payload as the kernel build makes it: the compressed stream plus, except for
/// gzip whose trailer already ends in the size, the le32 uncompressed size.
fn payload(format: Compression) -> Vec<u8> {
    let (lines, append) = match format {
        Compression::Gzip => (GZ, false),
        Compression::Xz => (XZ, true),
        Compression::Lzma => (LZMA, true),
        Compression::Lz4 => (LZ4, true),
        Compression::Zstd => (ZSTD, true),
        _ => panic!("no vector for {format}"),
    };
    let mut p = unhex(lines);
    if append {
        p.extend_from_slice(&(fake_vmlinux().len() as u32).to_le_bytes());
    }
    p
}

/// A bzImage shell around `payload`: `setup_sects` (0 = 4), protocol `version`, some
/// protected-mode bytes before and after the payload.
fn bzimage_with(payload: &[u8], setup_sects: u8, version: u16) -> Vec<u8> {
    let sects = if setup_sects == 0 {
        4
    } else {
        usize::from(setup_sects)
    };
    let pm_start = (sects + 1) * SECTOR_SIZE;
    let lead = 0x3c0; // decompressor stub before the payload
    let mut img = vec![0u8; pm_start + lead];
    img[OFF_SETUP_SECTS] = setup_sects;
    img[OFF_BOOT_FLAG..OFF_BOOT_FLAG + 2].copy_from_slice(&BOOT_FLAG.to_le_bytes());
    img[OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4].copy_from_slice(HEADER_MAGIC);
    img[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&version.to_le_bytes());
    img[OFF_PAYLOAD_OFFSET..OFF_PAYLOAD_OFFSET + 4].copy_from_slice(&(lead as u32).to_le_bytes());
    img[OFF_PAYLOAD_LENGTH..OFF_PAYLOAD_LENGTH + 4]
        .copy_from_slice(&(payload.len() as u32).to_le_bytes());
    img[pm_start..].fill(0x90);
    img.extend_from_slice(payload);
    img.extend_from_slice(&[0xcc; 100]); // code/data after the payload
    img
}

fn bzimage(payload: &[u8]) -> Vec<u8> {
    bzimage_with(payload, 27, 0x020f)
}

const SUPPORTED: [Compression; 5] = [
    Compression::Gzip,
    Compression::Xz,
    Compression::Lzma,
    Compression::Lz4,
    Compression::Zstd,
];

#[test]
fn extracts_every_supported_format() {
    let want = fake_vmlinux();
    for format in SUPPORTED {
        let p = payload(format);
        assert_eq!(detect_compression(&p), Some(format));
        let got = extract_vmlinux(&bzimage(&p)).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert!(got == want, "{format}: output differs");
    }
}

#[test]
fn setup_sects_zero_means_four() {
    let p = payload(Compression::Gzip);
    let img = bzimage_with(&p, 0, 0x0208);
    assert_eq!(locate_payload(&img).unwrap(), &p[..]);
    assert_eq!(extract_vmlinux(&img).unwrap(), fake_vmlinux());
}

#[test]
fn rejects_short_and_empty_files() {
    for len in [0, 1, 0x1ff, SETUP_HEADER_END - 1] {
        let e = extract_vmlinux(&vec![0u8; len]).unwrap_err();
        assert!(matches!(e, VmlinuxError::TooShort { .. }), "{len}: {e}");
    }
}

#[test]
fn rejects_bad_magics_and_old_protocol() {
    let good = bzimage(&payload(Compression::Gzip));

    let mut img = good.clone();
    img[OFF_BOOT_FLAG] = 0;
    let e = extract_vmlinux(&img).unwrap_err();
    assert!(
        matches!(e, VmlinuxError::BadBootFlag { found: 0xaa00 }),
        "{e}"
    );

    let mut img = good.clone();
    img[OFF_HEADER_MAGIC + 3] = b'Z';
    let e = extract_vmlinux(&img).unwrap_err();
    assert!(matches!(e, VmlinuxError::BadHeaderMagic), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("HdrS") && msg.contains("0x202") && msg.contains("vmlinux ELF"));

    let mut img = good;
    img[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&0x0207u16.to_le_bytes());
    let e = extract_vmlinux(&img).unwrap_err();
    assert!(
        matches!(e, VmlinuxError::ProtocolTooOld { version: 0x0207 }),
        "{e}"
    );
    assert!(e.to_string().contains("2.07"), "{e}");
}

#[test]
fn rejects_payload_out_of_bounds() {
    let p = payload(Compression::Gzip);
    let good = bzimage(&p);
    let set = |img: &mut Vec<u8>, off: usize, v: u32| {
        img[off..off + 4].copy_from_slice(&v.to_le_bytes());
    };
    for (offset, length) in [
        (0x3c0, u32::MAX),
        (u32::MAX, 16),
        (u32::MAX, u32::MAX),
        (0x3c0, 3),
        (0x3c0, 0),
        (good.len() as u32, 16),
    ] {
        let mut img = good.clone();
        set(&mut img, OFF_PAYLOAD_OFFSET, offset);
        set(&mut img, OFF_PAYLOAD_LENGTH, length);
        let e = extract_vmlinux(&img).unwrap_err();
        assert!(matches!(e, VmlinuxError::PayloadOutOfBounds { .. }), "{e}");
    }
    // A file cut inside the payload.
    let cut = &good[..good.len() - 100 - p.len() / 2];
    let e = extract_vmlinux(cut).unwrap_err();
    assert!(matches!(e, VmlinuxError::PayloadOutOfBounds { .. }), "{e}");
}

#[test]
fn rejects_unknown_and_unsupported_compression() {
    let e = extract_vmlinux(&bzimage(b"\x00\x11\x22\x33\x44\x55\x66\x77")).unwrap_err();
    assert!(matches!(e, VmlinuxError::UnknownCompression { .. }), "{e}");
    assert!(e.to_string().contains("00 11 22 33"), "{e}");

    let e = extract_vmlinux(&bzimage(b"BZh91AY&SY\0\0\0\0")).unwrap_err();
    assert!(
        matches!(
            e,
            VmlinuxError::UnsupportedCompression {
                format: Compression::Bzip2
            }
        ),
        "{e}"
    );
    let e = extract_vmlinux(&bzimage(b"\x89LZO\x00\x0d\x0a\x1a\x0a\x10\x30\0\0\0\0")).unwrap_err();
    assert!(
        matches!(
            e,
            VmlinuxError::UnsupportedCompression {
                format: Compression::Lzo
            }
        ),
        "{e}"
    );
}

#[test]
fn wrong_compression_for_the_data_is_an_error() {
    // lz4 data under a zstd magic, gzip data under an xz magic, etc.
    for (magic, from) in [
        (&[0x28u8, 0xB5, 0x2F, 0xFD][..], Compression::Lz4),
        (&[0xFD, b'7', b'z', b'X', b'Z', 0x00][..], Compression::Gzip),
        (&[0x02, 0x21, 0x4C, 0x18][..], Compression::Zstd),
        (&[0x1F, 0x8B][..], Compression::Xz),
        (&[0x5D, 0x00, 0x00][..], Compression::Lz4),
    ] {
        let mut p = payload(from);
        p[..magic.len()].copy_from_slice(magic);
        let r = extract_vmlinux(&bzimage(&p));
        assert!(r.is_err(), "{from} data under another magic was accepted");
    }
}

#[test]
fn truncated_payloads_are_errors() {
    for format in SUPPORTED {
        let full = payload(format);
        let compressed_len = if format == Compression::Gzip {
            full.len()
        } else {
            full.len() - 4
        };
        for keep in (0..compressed_len).step_by(7).chain([compressed_len - 1]) {
            // Cut the stream, but keep a correct size trailer where the kernel puts one.
            let mut p = full[..keep].to_vec();
            if format != Compression::Gzip {
                p.extend_from_slice(&full[full.len() - 4..]);
            }
            if p.len() < 4 {
                continue;
            }
            let r = extract_vmlinux(&bzimage(&p));
            assert!(
                r.is_err(),
                "{format}: {keep} of {compressed_len} bytes accepted"
            );
        }
    }
}

#[test]
fn size_trailer_is_checked() {
    for format in [
        Compression::Xz,
        Compression::Lzma,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut p = payload(format);
        let n = p.len();
        p[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
        let e = extract_vmlinux(&bzimage(&p)).unwrap_err();
        if format == Compression::Lz4 {
            // lz4 decodes into a buffer of the recorded size and stops at its end.
            assert!(e.to_string().contains("runs past the 1000 bytes"), "{e}");
        } else {
            assert!(
                matches!(e, VmlinuxError::LongerThanTrailer { expected: 1000, .. }),
                "{format}: {e}"
            );
        }
        // A trailer larger than the real size: the data ends early.
        p[n - 4..].copy_from_slice(&5000u32.to_le_bytes());
        let e = extract_vmlinux(&bzimage(&p)).unwrap_err();
        assert!(
            matches!(
                e,
                VmlinuxError::SizeMismatch {
                    expected: 5000,
                    actual: 4216,
                    ..
                }
            ),
            "{format}: {e}"
        );
        // A trailer above the limit is refused before any decoding.
        p[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = extract_vmlinux(&bzimage(&p)).unwrap_err();
        assert!(matches!(e, VmlinuxError::TooLarge { .. }), "{format}: {e}");
    }
}

#[test]
fn zstd_huge_window_is_refused_before_allocating() {
    // A frame header asking for a 2 TiB window (window descriptor exponent 31).
    let mut p = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 31 << 3, 0, 0, 0, 0];
    p.extend_from_slice(&4216u32.to_le_bytes());
    let e = extract_vmlinux(&bzimage(&p)).unwrap_err();
    assert!(matches!(e, VmlinuxError::TooLarge { .. }), "{e}");
    // Single-segment frame claiming 4 GiB of content.
    let mut p = vec![0x28, 0xB5, 0x2F, 0xFD, 0xE0, 0, 0, 0, 0, 1, 0, 0, 0];
    p.extend_from_slice(&4216u32.to_le_bytes());
    let e = extract_vmlinux(&bzimage(&p)).unwrap_err();
    assert!(matches!(e, VmlinuxError::TooLarge { .. }), "{e}");
}

#[test]
fn lzma_huge_dictionary_is_refused() {
    let mut p = vec![
        0x5D, 0x00, 0x00, 0x00, 0xF0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    p.extend_from_slice(&[0; 16]);
    p.extend_from_slice(&4216u32.to_le_bytes());
    let e = extract_vmlinux(&bzimage(&p)).unwrap_err();
    assert!(matches!(e, VmlinuxError::TooLarge { .. }), "{e}");
}

fn lz4_legacy(blocks: &[&[u8]], magic_between: bool) -> Vec<u8> {
    let mut p = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
    let mut total = 0usize;
    for (i, b) in blocks.iter().enumerate() {
        if magic_between && i > 0 {
            p.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
        }
        let c = lz4_flex::block::compress(b);
        p.extend_from_slice(&(c.len() as u32).to_le_bytes());
        p.extend_from_slice(&c);
        total += b.len();
    }
    p.extend_from_slice(&(total as u32).to_le_bytes());
    p
}

#[test]
fn lz4_multiple_8mib_blocks_and_concatenated_frames() {
    let mut want = fake_vmlinux();
    want.resize(LZ4_LEGACY_BLOCK * 2 + 12345, 0);
    for (i, b) in want.iter_mut().enumerate().skip(5000).step_by(4093) {
        *b = (i % 256) as u8;
    }
    let chunks: Vec<&[u8]> = want.chunks(LZ4_LEGACY_BLOCK).collect();
    assert_eq!(chunks.len(), 3);
    for magic_between in [false, true] {
        let got = extract_vmlinux(&bzimage(&lz4_legacy(&chunks, magic_between))).unwrap();
        assert!(got == want);
    }
    // A block that claims more than a legacy block can hold is refused.
    let mut p = lz4_legacy(&chunks[..1], false);
    p[4..8].copy_from_slice(&(LZ4_LEGACY_MAX_CBLOCK as u32 + 1).to_le_bytes());
    let e = extract_vmlinux(&bzimage(&p)).unwrap_err();
    assert!(matches!(e, VmlinuxError::Decompress { .. }), "{e}");
}

#[test]
fn decompressed_non_elf_is_refused() {
    let mut not_elf = fake_vmlinux();
    not_elf[18] = 0xB7; // e_machine = AArch64
    let p = lz4_legacy(&[&not_elf], false);
    let e = extract_vmlinux(&bzimage(&p)).unwrap_err();
    assert!(matches!(e, VmlinuxError::NotElf { .. }), "{e}");
    assert!(e.to_string().contains("x86-64"), "{e}");

    let p = lz4_legacy(
        &[b"hello, this is not an ELF at all; hello hello hello"],
        false,
    );
    let e = extract_vmlinux(&bzimage(&p)).unwrap_err();
    assert!(matches!(e, VmlinuxError::NotElf { .. }), "{e}");
}

#[test]
fn elf_checks() {
    let good = fake_vmlinux();
    assert!(is_elf(&good));
    assert!(check_vmlinux_elf(&good).is_ok());
    assert!(!is_elf(b""));
    assert!(!is_elf(b"\x7fEL"));
    assert!(!is_elf(&bzimage(&payload(Compression::Gzip))));
    assert!(is_elf(b"\x7fELF")); // only the magic; the check says more
    assert!(check_vmlinux_elf(b"\x7fELF").is_err());

    let broken = |off: usize, val: u8| {
        let mut v = good.clone();
        v[off] = val;
        check_vmlinux_elf(&v).unwrap_err()
    };
    broken(4, 1); // ELFCLASS32
    broken(5, 2); // big-endian
    broken(16, 3); // ET_DYN
    broken(18, 3); // EM_386
    broken(56, 0); // no program headers
    broken(54, 32); // phentsize too small
    broken(57, 0x40); // phnum huge: headers past the end
    broken(39, 0xff); // phoff huge
    assert!(check_vmlinux_elf(&good[..100]).is_err());

    assert!(matches!(
        vmlinux_from_image(&good).unwrap(),
        Cow::Borrowed(_)
    ));
    let img = bzimage(&payload(Compression::Xz));
    let owned = vmlinux_from_image(&img).unwrap();
    assert!(matches!(owned, Cow::Owned(_)) && owned[..] == good[..]);
}

fn fuzz_iterations() -> usize {
    std::env::var("VMLINUX_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Small deterministic corruption sweep over every format: the decoders themselves (not
/// the panic guard in `extract_vmlinux`) must return errors, never panic.
#[test]
fn corrupted_payloads_never_panic() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for format in SUPPORTED {
        let good = payload(format);
        for _ in 0..fuzz_iterations() {
            let mut p = good.clone();
            for _ in 0..1 + rand() % 4 {
                let at = (rand() % p.len() as u64) as usize;
                p[at] ^= 1 << (rand() % 8);
            }
            let _ = decompress_payload(&p, format, MAX_VMLINUX_SIZE);
        }
    }
}

/// Extracts a real Debian cloud kernel when one is on this machine
/// (`scripts/linux-guest.sh` installs it and copies it to target/linux-guest/vmlinuz).
#[test]
fn real_debian_cloud_kernel() {
    let mut candidates: Vec<std::path::PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("HVKVM_BZIMAGE") {
        candidates.push(p.into());
    }
    if let Ok(dir) = std::fs::read_dir("/boot") {
        let mut boot: Vec<_> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
            })
            .collect();
        boot.sort();
        candidates.extend(boot.into_iter().rev());
    }
    candidates
        .push(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/linux-guest/vmlinuz"));
    let Some(path) = candidates.into_iter().find(|p| p.is_file()) else {
        println!(
            "SKIP: no Debian cloud kernel (/boot/vmlinuz-*-cloud-amd64, \
             target/linux-guest/vmlinuz or $HVKVM_BZIMAGE); run scripts/linux-guest.sh"
        );
        return;
    };
    let image = std::fs::read(&path).unwrap();
    let payload = locate_payload(&image).unwrap();
    let format = detect_compression(payload).unwrap();
    let t = std::time::Instant::now();
    let vmlinux = extract_vmlinux(&image).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let took = t.elapsed();
    println!(
        "{}: {format} payload of {} bytes -> vmlinux of {} bytes in {took:?}",
        path.display(),
        payload.len(),
        vmlinux.len()
    );
    check_vmlinux_elf(&vmlinux).unwrap();
    assert!(
        vmlinux.len() > 16 << 20,
        "a distribution kernel's vmlinux is > 16 MiB"
    );
    assert!(
        vmlinux.len() > image.len(),
        "vmlinux should be larger than the bzImage"
    );
    assert!(matches!(
        vmlinux_from_image(&vmlinux).unwrap(),
        Cow::Borrowed(_)
    ));
}

#[test]
fn a_limit_below_the_recorded_size_is_refused_before_decompressing() {
    for format in SUPPORTED {
        let image = bzimage(&payload(format));
        let size = extract_vmlinux(&image).unwrap().len();
        assert_eq!(extract_vmlinux_within(&image, size).unwrap().len(), size);
        let e = extract_vmlinux_within(&image, size - 1).unwrap_err();
        assert!(
            matches!(e, VmlinuxError::TooLarge { limit, .. } if limit == size as u64 - 1),
            "{format}: {e}"
        );
    }
}
