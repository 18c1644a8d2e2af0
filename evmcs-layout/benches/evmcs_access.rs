//! eVMCS field lookup by encoding, field read/write, and the L0 sync with 0, 1 and all clean-field
//! groups dirty. Pure memory work (no KVM): `cargo bench -p evmcs-layout`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use evmcs_layout::{
    access, lookup, read_field, sync_with_clean, vmcs, write_field, write_field_and_dirty,
    CleanFields, Page, VmcsImage, FIELD_TABLE,
};

/// Encodings from the first, a middle and the last class of the lookup map.
const PROBES: [(&str, u32); 4] = [
    ("VIRTUAL_PROCESSOR_ID", vmcs::VIRTUAL_PROCESSOR_ID),
    ("VM_EXIT_REASON", vmcs::VM_EXIT_REASON),
    ("GUEST_RIP", vmcs::GUEST_RIP),
    ("HOST_INTR_SSP_TABLE", vmcs::HOST_INTR_SSP_TABLE),
];

fn filled_page() -> Page {
    let mut page = Page::ZERO;
    access::initialize(&mut page).expect("page holds an eVMCS");
    for (row, f) in FIELD_TABLE.iter().enumerate() {
        write_field(&mut page, f.encoding, row as u64 * 0x1_0001).expect("table encoding");
    }
    page
}

fn lookup_by_encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for (name, enc) in PROBES {
        group.bench_with_input(BenchmarkId::new("map", name), &enc, |b, &enc| {
            b.iter(|| lookup(black_box(enc)))
        });
    }
    // Baseline: what a linear scan of the table would cost.
    group.bench_function("linear_scan/HOST_INTR_SSP_TABLE", |b| {
        b.iter(|| {
            FIELD_TABLE
                .iter()
                .find(|f| f.encoding == black_box(vmcs::HOST_INTR_SSP_TABLE))
        })
    });
    group.bench_function("map/all_fields", |b| {
        b.iter(|| {
            FIELD_TABLE
                .iter()
                .filter_map(|f| lookup(black_box(f.encoding)))
                .count()
        })
    });
    group.finish();
}

fn field_access(c: &mut Criterion) {
    let mut page = filled_page();
    let mut group = c.benchmark_group("field");
    group.bench_function("read/GUEST_RIP", |b| {
        b.iter(|| read_field(&page, black_box(vmcs::GUEST_RIP)))
    });
    group.bench_function("write/GUEST_RSP", |b| {
        b.iter(|| write_field(&mut page, black_box(vmcs::GUEST_RSP), black_box(0x8000)))
    });
    group.bench_function("write_and_dirty/GUEST_RSP", |b| {
        b.iter(|| write_field_and_dirty(&mut page, black_box(vmcs::GUEST_RSP), black_box(0x8000)))
    });
    group.finish();
}

fn sync(c: &mut Criterion) {
    let page = filled_page();
    let mut image = VmcsImage::new();
    let mut group = c.benchmark_group("sync");
    for (name, clean) in [
        ("0_dirty", CleanFields::ALL),
        (
            "1_dirty_guest_basic",
            CleanFields::ALL - CleanFields::GUEST_BASIC,
        ),
        (
            "1_dirty_guest_grp2",
            CleanFields::ALL - CleanFields::GUEST_GRP2,
        ),
        ("all_dirty", CleanFields::empty()),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| sync_with_clean(&page, &mut image, black_box(clean)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = lookup_by_encoding, field_access, sync
}
criterion_main!(benches);
