//! Unit tests of the parent module.

use super::*;
use vm_memory::GuestMemoryMmap;

/// RAM is 0..RAM_SIZE; tests put input at IN and output at OUT.
const RAM_SIZE: u64 = 0x10000;
const IN: u64 = 0x1000;
const OUT: u64 = 0x2000;

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap()
}

fn put(mem: &GuestMemoryMmap, gpa: u64, words: &[u64]) {
    for (i, w) in (0u64..).zip(words) {
        mem.write_obj(*w, GuestAddress(gpa + 8 * i)).unwrap();
    }
}

/// XMM registers holding `halves` (XMM0 low, XMM0 high, XMM1 low, ...).
fn xmm(halves: &[u64]) -> [u128; 6] {
    let mut regs = [0u128; 6];
    for (i, w) in halves.iter().enumerate() {
        regs[i / 2] |= u128::from(*w) << (64 * (i % 2));
    }
    regs
}

/// What the recording services were asked to flush.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flushed {
    code: u16,
    address_space: u64,
    flags: u64,
    set: VpSet,
    gvas: Option<Vec<u64>>,
}

/// Services that behave like KVM where KVM implements a call (flush and IPI succeed),
/// recording every request.
#[derive(Default, Debug)]
struct Kvmish {
    spins: u32,
    flushes: Vec<Flushed>,
    ipis: Vec<(u8, VpSet)>,
    synic: bool,
    messages: Vec<PostMessage>,
    events: Vec<(u32, u16)>,
    capabilities: Option<u64>,
}

impl HypercallServices for Kvmish {
    fn notify_long_spin_wait(&mut self, _vcpu: u32) {
        self.spins += 1;
    }
    fn flush_virtual_address(&mut self, _vcpu: u32, r: &FlushRequest<'_>) -> u16 {
        let (code, address_space, flags) = (r.code, r.address_space, r.flags);
        let (set, gvas) = (r.processors.clone(), r.gvas.map(<[u64]>::to_vec));
        self.flushes.push(Flushed {
            code,
            address_space,
            flags,
            set,
            gvas,
        });
        status::SUCCESS
    }
    fn send_ipi(&mut self, _vcpu: u32, vector: u8, targets: &VpSet) -> u16 {
        self.ipis.push((vector, targets.clone()));
        status::SUCCESS
    }
    fn synic_active(&self, _vcpu: u32) -> bool {
        self.synic
    }
    fn post_message(&mut self, _vcpu: u32, m: &PostMessage) -> u16 {
        self.messages.push(m.clone());
        status::SUCCESS
    }
    fn signal_event(&mut self, _vcpu: u32, connection_id: u32, flag: u16) -> u16 {
        self.events.push((connection_id, flag));
        status::SUCCESS
    }
    fn ext_query_capabilities(&mut self, _vcpu: u32) -> Result<u64, u16> {
        self.capabilities.ok_or(NOT_IMPLEMENTED)
    }
}

/// Only the required method: every default, as hvkvm's user backend has today.
#[derive(Default, Debug)]
struct Minimal {
    spins: u32,
}

impl HypercallServices for Minimal {
    fn notify_long_spin_wait(&mut self, _vcpu: u32) {
        self.spins += 1;
    }
}

fn ctl(code: u16) -> Control {
    Control {
        code,
        ..Control::default()
    }
}

fn fast(code: u16) -> Control {
    Control {
        fast: true,
        ..ctl(code)
    }
}

fn reps(code: u16, n: u16) -> Control {
    Control {
        rep_count: n,
        ..ctl(code)
    }
}

fn regs(c: Control, rdx: u64, r8: u64) -> HypercallRegs {
    HypercallRegs {
        rcx: c.encode(),
        rdx,
        r8,
        xmm: None,
    }
}

/// Issues a call from CPL 0 in 64-bit mode as the VMM would: XMM registers (zero unless
/// given) are filled only when `needs_xmm` says so.
fn issue(
    mut r: HypercallRegs,
    offered: Offered,
    mem: &GuestMemoryMmap,
    s: &mut dyn HypercallServices,
) -> Outcome {
    if needs_xmm(&Control::decode(r.rcx), &offered) {
        r.xmm = r.xmm.or(Some([0; 6]));
    } else {
        r.xmm = None;
    }
    handle(0, 0, true, &r, &offered, mem, s)
}

/// `issue` with RDX = IN and R8 = OUT.
fn run(c: Control, o: Offered, mem: &GuestMemoryMmap, s: &mut dyn HypercallServices) -> Outcome {
    issue(regs(c, IN, OUT), o, mem, s)
}

fn done(status: u16) -> Outcome {
    Outcome::Complete(result(status, 0))
}

fn everything() -> Offered {
    Offered {
        hypercall_msrs: true,
        post_messages: true,
        signal_events: true,
        debugging: true,
        ext_hypercalls: true,
        xmm_input: true,
        remote_flush: true,
        cluster_ipi: true,
        ex_processor_masks: true,
        spin_retries: 0xfff,
        syndbg: true,
    }
}

#[test]
fn control_decode_every_field() {
    let raw = 0x1234 | FAST_BIT | 0x2a5 << 17 | 0xabc << 32 | 0x321 << 48;
    let c = Control::decode(raw);
    assert_eq!((c.code, c.fast, c.var_header_qwords), (0x1234, true, 0x2a5));
    assert_eq!(
        (c.rep_count, c.rep_start, c.reserved_bits),
        (0xabc, 0x321, 0)
    );
    assert_eq!(c.encode(), raw);
    // Each field at its maximum, alone.
    assert_eq!(
        Control::decode(0xffff),
        Control {
            code: 0xffff,
            ..Control::default()
        }
    );
    assert_eq!(Control::decode(0x3ff << 17).var_header_qwords, 0x3ff);
    assert_eq!(Control::decode(0xfff << 32).rep_count, 0xfff);
    assert_eq!(Control::decode(0xfff << 48).rep_start, 0xfff);
    assert!(!Control::decode(!FAST_BIT).fast);
    let all = Control::decode(u64::MAX);
    assert_eq!(all.reserved_bits, CONTROL_RESERVED_MASK);
    assert_eq!(all.encode(), u64::MAX);
}

#[test]
fn reserved_bits_are_31_27_47_44_63_60() {
    for bit in 0..64 {
        let reserved = Control::decode(1 << bit).reserved_bits != 0;
        let expected = (27..=31).contains(&bit) || (44..=47).contains(&bit) || bit >= 60;
        assert_eq!(reserved, expected, "bit {bit}");
    }
}

#[test]
fn reserved_bits_give_invalid_input_after_the_gate() {
    let mem = ram();
    let offered = Offered {
        spin_retries: 1,
        ..Offered::default()
    };
    let mut m = Minimal::default();
    for bit in (27..=31).chain(44..=47).chain(60..=63) {
        let with = |code| Control {
            reserved_bits: 1 << bit,
            ..ctl(code)
        };
        let spin = run(with(code::NOTIFY_LONG_SPIN_WAIT), offered, &mem, &mut m);
        assert_eq!(spin, done(status::INVALID_HYPERCALL_INPUT));
        // Unknown code: reserved bits are reported first (KVM's order).
        let unknown = run(with(0xbeef), offered, &mem, &mut m);
        assert_eq!(unknown, done(status::INVALID_HYPERCALL_INPUT));
        // A closed gate is reported before reserved bits.
        let denied = run(with(code::POST_MESSAGE), offered, &mem, &mut m);
        assert_eq!(denied, done(status::ACCESS_DENIED));
    }
    assert_eq!(m.spins, 0);
}

#[test]
fn offered_from_cpuid() {
    let leaves = [
        (
            0x4000_0003,
            [1 << 5, 1 << 4 | 1 << 5 | 1 << 11 | 1 << 20, 0, 1 << 4],
        ),
        (0x4000_0004, [1 << 2 | 1 << 10 | 1 << 11, 0xfff, 0, 0]),
        (0x4000_0082, [1 << 1, 0, 0, 0]),
        (0x4000_0003, [0, 0, 0, 0]), // a duplicate: the first one wins
    ];
    assert_eq!(Offered::from_cpuid(&leaves), everything());
    assert_eq!(Offered::from_cpuid(&[]), Offered::default());
    let one = |function: u32, reg: usize, bit: u32| {
        let mut values = [0; 4];
        values[reg] = 1 << bit;
        Offered::from_cpuid(&[(function, values)])
    };
    assert!(one(0x4000_0003, 0, 5).hypercall_msrs);
    assert!(one(0x4000_0003, 1, 4).post_messages);
    assert!(one(0x4000_0003, 1, 5).signal_events);
    assert!(one(0x4000_0003, 1, 11).debugging);
    assert!(one(0x4000_0003, 1, 20).ext_hypercalls);
    assert!(one(0x4000_0003, 3, 4).xmm_input);
    assert!(one(0x4000_0004, 0, 2).remote_flush);
    assert!(one(0x4000_0004, 0, 10).cluster_ipi);
    assert!(one(0x4000_0004, 0, 11).ex_processor_masks);
    assert!(one(0x4000_0082, 0, 1).syndbg);
    assert_eq!(one(0x4000_0004, 1, 31).spin_retries, 1 << 31);
    assert!(!Offered {
        spin_retries: 0,
        ..everything()
    }
    .spin_wait_notify());
    assert!(!Offered {
        spin_retries: u32::MAX,
        ..everything()
    }
    .spin_wait_notify());
    assert!(Offered {
        spin_retries: 1,
        ..everything()
    }
    .spin_wait_notify());
}

#[test]
fn result_encoding() {
    assert_eq!(result(status::SUCCESS, 0), 0);
    assert_eq!(result(status::INVALID_ALIGNMENT, 0), 4);
    assert_eq!(result(status::SUCCESS, 5), 5 << 32);
    assert_eq!(
        result(status::VTL_ALREADY_ENABLED, 0xfff),
        0x86 | 0xfff << 32
    );
    // Reps beyond 12 bits are truncated, never spilling into reserved bits.
    assert_eq!(result(0, 0xffff), 0xfff << 32);
}

/// The hypercall rows of the hyperv_features.c matrix (reference section 4) in its order:
/// `03.EAX[5]` throughout, the bits each row names added, zeroed input and output pages.
#[test]
fn hyperv_features_matrix() {
    let base = Offered {
        hypercall_msrs: true,
        ..Offered::default()
    };
    let post = Offered {
        post_messages: true,
        ..base
    };
    let signal = Offered {
        signal_events: true,
        ..base
    };
    let syndbg = Offered {
        syndbg: true,
        ..base
    };
    let debugging = Offered {
        debugging: true,
        ..syndbg
    };
    let flush = Offered {
        remote_flush: true,
        ..base
    };
    let flush_ex = Offered {
        ex_processor_masks: true,
        ..flush
    };
    let ipi = Offered {
        cluster_ipi: true,
        ..flush_ex
    };
    let spin = Offered {
        spin_retries: 1,
        ..ipi
    };
    let xmm_in = Offered {
        xmm_input: true,
        ..spin
    };
    let ext = Offered {
        ext_hypercalls: true,
        ..xmm_in
    };
    let (ud, s) = (Outcome::InvalidOpcode, done);
    use code::*;
    use status::{ACCESS_DENIED as DENIED, INVALID_HYPERCALL_CODE as BAD_CODE};
    use status::{INVALID_HYPERCALL_INPUT as BAD_INPUT, INVALID_PARAMETER as BAD_PARAM};
    use status::{OPERATION_DENIED as OP_DENIED, SUCCESS as OK};
    #[rustfmt::skip]
    let rows = [
        ("0xbeef", ctl(0xbeef), base, s(BAD_CODE)),
        ("PostMessage", ctl(POST_MESSAGE), base, s(DENIED)),
        ("PostMessage +03.EBX[4]", ctl(POST_MESSAGE), post, s(BAD_INPUT)),
        ("SignalEvent", ctl(SIGNAL_EVENT), base, s(DENIED)),
        ("SignalEvent +03.EBX[5]", ctl(SIGNAL_EVENT), signal, s(BAD_INPUT)),
        ("ResetDebugSession", ctl(RESET_DEBUG_SESSION), base, s(BAD_CODE)),
        ("ResetDebugSession +82.EAX[1]", ctl(RESET_DEBUG_SESSION), syndbg, s(DENIED)),
        ("ResetDebugSession +03.EBX[11]", ctl(RESET_DEBUG_SESSION), debugging, s(OP_DENIED)),
        ("FlushVASpace", ctl(FLUSH_VIRTUAL_ADDRESS_SPACE), base, s(DENIED)),
        ("FlushVASpace +04.EAX[2]", ctl(FLUSH_VIRTUAL_ADDRESS_SPACE), flush, s(OK)),
        ("FlushVASpaceEx", ctl(FLUSH_VIRTUAL_ADDRESS_SPACE_EX), flush, s(DENIED)),
        ("FlushVASpaceEx +04.EAX[11]", ctl(FLUSH_VIRTUAL_ADDRESS_SPACE_EX), flush_ex, s(OK)),
        ("SendIPI", ctl(SEND_SYNTHETIC_CLUSTER_IPI), flush_ex, s(DENIED)),
        ("SendIPI +04.EAX[10], vector 0", ctl(SEND_SYNTHETIC_CLUSTER_IPI), ipi, s(BAD_INPUT)),
        ("SendIPIEx, empty sparse set", ctl(SEND_SYNTHETIC_CLUSTER_IPI_EX), ipi, s(OK)),
        ("NotifyLongSpinWait", ctl(NOTIFY_LONG_SPIN_WAIT), ipi, s(DENIED)),
        ("NotifyLongSpinWait 04.EBX=1", ctl(NOTIFY_LONG_SPIN_WAIT), spin, s(OK)),
        ("FlushVASpace|fast", fast(FLUSH_VIRTUAL_ADDRESS_SPACE), spin, ud),
        ("FlushVASpace|fast +03.EDX[4]", fast(FLUSH_VIRTUAL_ADDRESS_SPACE), xmm_in, s(OK)),
        ("ExtQueryCaps", ctl(EXT_QUERY_CAPABILITIES), xmm_in, s(DENIED)),
        ("ExtQueryCaps +03.EBX[20], fast", fast(EXT_QUERY_CAPABILITIES), ext, s(BAD_PARAM)),
    ];
    let mem = ram();
    for (what, c, offered, expected) in rows {
        assert_eq!(
            run(c, offered, &mem, &mut Kvmish::default()),
            expected,
            "{what}"
        );
    }
}

/// Everything offered but only the required service: what each call answers today.
#[test]
fn default_services() {
    let mem = ram();
    use code::*;
    let cases = [
        (ctl(FLUSH_VIRTUAL_ADDRESS_SPACE), NOT_IMPLEMENTED),
        (ctl(FLUSH_VIRTUAL_ADDRESS_SPACE_EX), status::SUCCESS), // empty set: no service
        (
            ctl(SEND_SYNTHETIC_CLUSTER_IPI),
            status::INVALID_HYPERCALL_INPUT,
        ), // vector 0
        (ctl(SEND_SYNTHETIC_CLUSTER_IPI_EX), status::SUCCESS),  // empty set: no service
        (ctl(POST_MESSAGE), status::INVALID_HYPERCALL_INPUT),   // no SynIC
        (ctl(SIGNAL_EVENT), status::INVALID_HYPERCALL_INPUT),   // no SynIC
        (ctl(RESET_DEBUG_SESSION), status::OPERATION_DENIED),   // no debugger
        (ctl(EXT_QUERY_CAPABILITIES), NOT_IMPLEMENTED),
        (ctl(NOTIFY_LONG_SPIN_WAIT), status::SUCCESS),
    ];
    let mut m = Minimal::default();
    for (c, expected) in cases {
        assert_eq!(
            run(c, everything(), &mem, &mut m),
            done(expected),
            "{}",
            name(c.code)
        );
    }
    assert_eq!(m.spins, 1);
}

#[test]
fn unknown_and_not_provided_codes() {
    let mem = ram();
    let mut m = Kvmish::default();
    for code in [0x0, 0x1, 0xAF, 0xB0, 0xC0, 0xC1, 0x8000, 0x8042, 0xffff] {
        let answer = run(ctl(code), everything(), &mem, &mut m);
        assert_eq!(answer, done(status::INVALID_HYPERCALL_CODE), "{code:#x}");
    }
    // The rest of the extended range: gated by 03.EBX[20], then unsupported.
    let closed = run(ctl(0x8002), Offered::default(), &mem, &mut m);
    assert_eq!(closed, done(status::ACCESS_DENIED));
    let open = run(ctl(0x8041), everything(), &mem, &mut m);
    assert_eq!(open, done(status::INVALID_HYPERCALL_CODE));
    let fast_ext = run(fast(0x8041), everything(), &mem, &mut m);
    assert_eq!(fast_ext, done(status::INVALID_PARAMETER));
}

#[test]
fn invalid_opcode_cases() {
    let mem = ram();
    let mut m = Minimal::default();
    let spin = regs(ctl(code::NOTIFY_LONG_SPIN_WAIT), IN, OUT);
    for cpl in 1..=3 {
        let answer = handle(0, cpl, true, &spin, &everything(), &mem, &mut m);
        assert_eq!(answer, Outcome::InvalidOpcode);
    }
    let not_64 = handle(0, 0, false, &spin, &everything(), &mem, &mut m);
    assert_eq!(not_64, Outcome::InvalidOpcode);
    assert_eq!(m.spins, 0);
    let no_xmm = Offered {
        xmm_input: false,
        ..everything()
    };
    for code in [0x2, 0x3, 0x13, 0x14, 0x15] {
        let c = Control {
            rep_count: u16::from(code == 0x3 || code == 0x14),
            ..fast(code)
        };
        assert_eq!(
            run(c, no_xmm, &mem, &mut m),
            Outcome::InvalidOpcode,
            "{code:#x}"
        );
        assert!(!needs_xmm(&c, &no_xmm) && needs_xmm(&c, &everything()));
    }
    // A register-only fast call does not need XMM input.
    let c = fast(code::SEND_SYNTHETIC_CLUSTER_IPI);
    assert!(!needs_xmm(&c, &everything()));
    assert_eq!(
        run(c, no_xmm, &mem, &mut m),
        done(status::INVALID_HYPERCALL_INPUT)
    );
    // The gate comes first: ACCESS_DENIED, not #UD.
    let c = fast(code::FLUSH_VIRTUAL_ADDRESS_SPACE);
    assert_eq!(
        run(c, Offered::default(), &mem, &mut m),
        done(status::ACCESS_DENIED)
    );
}

#[test]
fn rep_and_variable_header_rules() {
    let mem = ram();
    let all = everything();
    let bad = done(status::INVALID_HYPERCALL_INPUT);
    let mut m = Kvmish::default();
    // Rep calls: rep count > 0 and rep start 0.
    for code in [
        code::FLUSH_VIRTUAL_ADDRESS_LIST,
        code::FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    ] {
        assert_eq!(run(reps(code, 0), all, &mem, &mut m), bad);
        let restarted = Control {
            rep_start: 1,
            ..reps(code, 2)
        };
        assert_eq!(run(restarted, all, &mem, &mut m), bad);
    }
    // Simple calls: no rep count or rep start.
    for code in [0x2, 0x8, 0xB, 0x13, 0x15, 0x5C, 0x5D, 0x8001] {
        assert_eq!(
            run(reps(code, 1), all, &mem, &mut m),
            bad,
            "{code:#x} rep count"
        );
        let started = Control {
            rep_start: 1,
            ..ctl(code)
        };
        assert_eq!(run(started, all, &mem, &mut m), bad, "{code:#x} rep start");
    }
    // A variable header only on the Ex forms.
    for code in [0x2, 0x3, 0x8, 0xB, 0x5C, 0x5D, 0x8001] {
        let c = Control {
            var_header_qwords: 1,
            rep_count: u16::from(code == 3),
            ..ctl(code)
        };
        assert_eq!(run(c, all, &mem, &mut m), bad, "{code:#x} var header");
    }
    assert_eq!(m.spins, 0);
    assert!(m.flushes.is_empty());
    // Success reports every rep completed.
    put(&mem, IN, &[0, 0, 1, 0x5000, 0x6000, 0x7000]);
    let list = run(reps(code::FLUSH_VIRTUAL_ADDRESS_LIST, 3), all, &mem, &mut m);
    assert_eq!(list, Outcome::Complete(result(status::SUCCESS, 3)));
    let expected = Flushed {
        code: code::FLUSH_VIRTUAL_ADDRESS_LIST,
        address_space: 0,
        flags: 0,
        set: VpSet::from_mask(1),
        gvas: Some(vec![0x5000, 0x6000, 0x7000]),
    };
    assert_eq!(m.flushes, vec![expected]);
}

#[test]
fn alignment_and_page_crossing() {
    let mem = ram();
    let all = everything();
    let mut m = Kvmish {
        synic: true,
        capabilities: Some(7),
        ..Kvmish::default()
    };
    let align = done(status::INVALID_ALIGNMENT);
    use code::*;
    for off in 1..8 {
        for code in [0x2, 0x3, 0xB, 0x13, 0x15, POST_MESSAGE, SIGNAL_EVENT] {
            let c = Control {
                rep_count: u16::from(code == 0x3),
                ..ctl(code)
            };
            assert_eq!(issue(regs(c, IN + off, OUT), all, &mem, &mut m), align);
        }
        let query = regs(ctl(EXT_QUERY_CAPABILITIES), IN, OUT + off);
        assert_eq!(issue(query, all, &mem, &mut m), align);
    }
    // FlushVirtualAddressList with 4 GVAs is 56 bytes: it may end exactly at a page end.
    let c = reps(FLUSH_VIRTUAL_ADDRESS_LIST, 4);
    let last = 2 * PAGE_SIZE - 56;
    let fits = issue(regs(c, last, OUT), all, &mem, &mut m);
    assert_eq!(fits, Outcome::Complete(result(status::SUCCESS, 4)));
    assert_eq!(issue(regs(c, last + 8, OUT), all, &mem, &mut m), align);
    // The variable header counts: sparse set with one bank (40 bytes in all).
    let c = Control {
        var_header_qwords: 1,
        ..ctl(FLUSH_VIRTUAL_ADDRESS_SPACE_EX)
    };
    put(
        &mem,
        2 * PAGE_SIZE - 40,
        &[0, 0, vp_set::SPARSE_4K, 1, 1 << 3],
    );
    assert_eq!(
        issue(regs(c, 2 * PAGE_SIZE - 40, OUT), all, &mem, &mut m),
        done(0)
    );
    assert_eq!(
        issue(regs(c, 2 * PAGE_SIZE - 32, OUT), all, &mem, &mut m),
        align
    );
    // PostMessage input is 256 bytes.
    let post = regs(ctl(POST_MESSAGE), 2 * PAGE_SIZE - 248, OUT);
    assert_eq!(issue(post, all, &mem, &mut m), align);
    // GPAs of calls without input or output are ignored.
    let spin = regs(ctl(NOTIFY_LONG_SPIN_WAIT), 3, 5);
    assert_eq!(issue(spin, all, &mem, &mut m), done(status::SUCCESS));
    assert_eq!(m.flushes.len(), 2);
}

#[test]
fn gpa_outside_ram_is_invalid_input() {
    let mem = ram();
    let all = everything();
    let mut m = Kvmish {
        synic: true,
        capabilities: Some(1),
        ..Kvmish::default()
    };
    let bad = done(status::INVALID_HYPERCALL_INPUT);
    for gpa in [RAM_SIZE, 0x10_0000, !0xfff_u64] {
        let gpa = gpa & !7;
        for code in [0x2, 0x13, 0xB, 0x15, 0x5C, 0x5D] {
            let answer = issue(regs(ctl(code), gpa, OUT), all, &mem, &mut m);
            assert_eq!(answer, bad, "{code:#x} at {gpa:#x}");
        }
        let query = regs(ctl(code::EXT_QUERY_CAPABILITIES), IN, gpa);
        assert_eq!(issue(query, all, &mem, &mut m), bad);
    }
    assert!(m.flushes.is_empty() && m.ipis.is_empty() && m.messages.is_empty());
}

#[test]
fn ext_query_capabilities_writes_the_output_gpa() {
    let mem = ram();
    let query = ctl(code::EXT_QUERY_CAPABILITIES);
    mem.write_obj(u64::MAX, GuestAddress(OUT)).unwrap();
    let mut m = Kvmish {
        capabilities: Some(0x1f),
        ..Kvmish::default()
    };
    assert_eq!(
        run(query, everything(), &mem, &mut m),
        done(status::SUCCESS)
    );
    assert_eq!(mem.read_obj::<u64>(GuestAddress(OUT)).unwrap(), 0x1f);
    // Default service: not implemented, and the output is left alone.
    mem.write_obj(u64::MAX, GuestAddress(OUT)).unwrap();
    let answer = run(query, everything(), &mem, &mut Minimal::default());
    assert_eq!(answer, done(NOT_IMPLEMENTED));
    assert_eq!(mem.read_obj::<u64>(GuestAddress(OUT)).unwrap(), u64::MAX);
}

#[test]
fn flush_processor_sets_and_gva_lists() {
    let mem = ram();
    let all = everything();
    let mut m = Kvmish::default();
    // Non-Ex: the ALL_PROCESSORS flag, or a zero mask, mean every VP.
    put(&mem, IN, &[0xc3, flush_flags::ALL_PROCESSORS, 0x6]);
    assert_eq!(run(ctl(0x2), all, &mem, &mut m), done(0));
    put(&mem, IN, &[0, 0, 0]);
    assert_eq!(run(ctl(0x2), all, &mem, &mut m), done(0));
    put(&mem, IN, &[0, 0, 0x6]);
    assert_eq!(run(ctl(0x2), all, &mem, &mut m), done(0));
    assert_eq!(
        (m.flushes[0].address_space, m.flushes[0].gvas.clone()),
        (0xc3, None)
    );
    assert!(m.flushes[0].set.is_all() && m.flushes[1].set.is_all());
    assert_eq!(m.flushes[2].set, VpSet::from_mask(0x6));
    // Ex sparse: banks 0 and 2 hold VPs 1 and 130; two GVAs follow the banks.
    put(
        &mem,
        IN,
        &[
            0,
            0,
            vp_set::SPARSE_4K,
            0b101,
            1 << 1,
            1 << 2,
            0xa000,
            0xb000,
        ],
    );
    let c = Control {
        var_header_qwords: 2,
        ..reps(0x14, 2)
    };
    assert_eq!(run(c, all, &mem, &mut m), Outcome::Complete(result(0, 2)));
    let set = &m.flushes[3].set;
    assert_eq!(set.iter(200).collect::<Vec<_>>(), vec![1, 130]);
    assert!(!set.contains(4095) && !set.contains(u32::MAX));
    assert_eq!(m.flushes[3].gvas, Some(vec![0xa000, 0xb000]));
    // The variable header must equal popcount(valid_bank_mask).
    let c = Control {
        var_header_qwords: 1,
        ..reps(0x14, 2)
    };
    assert_eq!(
        run(c, all, &mem, &mut m),
        done(status::INVALID_HYPERCALL_INPUT)
    );
    // Ex with a format other than SPARSE_4K flushes every VP (KVM).
    put(&mem, IN, &[0, 0, 7, 0]);
    assert_eq!(run(ctl(0x13), all, &mem, &mut m), done(0));
    assert!(m.flushes[4].set.is_all());
    // An empty sparse set succeeds without the service.
    put(&mem, IN, &[0, 0, vp_set::SPARSE_4K, 1, 0]);
    let c = Control {
        var_header_qwords: 1,
        ..ctl(0x13)
    };
    assert_eq!(run(c, all, &mem, &mut m), done(0));
    assert_eq!(m.flushes.len(), 5);
}

#[test]
fn xmm_fast_input_layout() {
    let mem = ram();
    let all = everything();
    let mut m = Kvmish::default();
    // FlushVirtualAddressListEx: RDX address space, R8 flags, XMM0 format and bank mask,
    // then the banks, then the GVAs.
    let c = Control {
        fast: true,
        var_header_qwords: 1,
        ..reps(0x14, 2)
    };
    let r = HypercallRegs {
        xmm: Some(xmm(&[0, 1, 0xff, 0x1000, 0x2000])),
        ..regs(c, 0x77, 0)
    };
    assert_eq!(issue(r, all, &mem, &mut m), Outcome::Complete(result(0, 2)));
    let f = &m.flushes[0];
    assert_eq!((f.address_space, &f.set), (0x77, &VpSet::from_mask(0xff)));
    assert_eq!(f.gvas, Some(vec![0x1000, 0x2000]));
    // More reps than XMM halves left.
    let r = HypercallRegs {
        rcx: Control { rep_count: 10, ..c }.encode(),
        ..r
    };
    assert_eq!(
        issue(r, all, &mem, &mut m),
        done(status::INVALID_HYPERCALL_INPUT)
    );
    // XMM needed but not supplied by the caller: an error, not a panic.
    let bare = HypercallRegs { xmm: None, ..r };
    let answer = handle(0, 0, true, &bare, &all, &mem, &mut m);
    assert_eq!(answer, done(status::INVALID_HYPERCALL_INPUT));
    // SendSyntheticClusterIpiEx: RDX vector, R8 format, XMM0 low bank mask, then banks.
    let c = Control {
        fast: true,
        var_header_qwords: 2,
        ..ctl(0x15)
    };
    let r = HypercallRegs {
        xmm: Some(xmm(&[0b11, 1 << 2, 1 << 1])),
        ..regs(c, 0x30, 0)
    };
    assert_eq!(issue(r, all, &mem, &mut m), done(0));
    assert_eq!(m.ipis[0].0, 0x30);
    assert_eq!(m.ipis[0].1.iter(128).collect::<Vec<_>>(), vec![2, 65]);
}

#[test]
fn ipi_vectors_and_fast_form() {
    let mem = ram();
    let all = everything();
    let mut m = Kvmish::default();
    let send = |rdx: u64, m: &mut Kvmish| {
        issue(
            regs(fast(code::SEND_SYNTHETIC_CLUSTER_IPI), rdx, 0b1),
            all,
            &mem,
            m,
        )
    };
    let bad = done(status::INVALID_HYPERCALL_INPUT);
    for vector in [0, 15, 256, u64::from(u32::MAX)] {
        assert_eq!(send(vector, &mut m), bad, "vector {vector}");
    }
    assert_eq!(send(16, &mut m), done(0));
    assert_eq!(send(255, &mut m), done(0));
    // Fast form: the high half of RDX is reserved.
    assert_eq!(send(1 << 32 | 0x40, &mut m), bad);
    assert_eq!(
        m.ipis,
        vec![(16, VpSet::from_mask(1)), (255, VpSet::from_mask(1))]
    );
    // Slow Ex with format ALL: the vector is checked.
    put(&mem, IN, &[5, vp_set::ALL, 0]);
    assert_eq!(run(ctl(0x15), all, &mem, &mut m), bad);
    put(&mem, IN, &[0x40, vp_set::ALL, 0]);
    assert_eq!(run(ctl(0x15), all, &mem, &mut m), done(0));
    assert_eq!(m.ipis[2], (0x40, VpSet::all()));
}

#[test]
fn post_message_and_signal_event() {
    let mem = ram();
    let all = everything();
    let mut m = Kvmish {
        synic: true,
        ..Kvmish::default()
    };
    let post = |conn: u64, kind: u64, size: u64, m: &mut Kvmish| {
        put(
            &mem,
            IN,
            &[conn, kind | size << 32, u64::from_le_bytes(*b"payload!")],
        );
        run(ctl(code::POST_MESSAGE), all, &mem, m)
    };
    let invalid = done(status::INVALID_PARAMETER);
    assert_eq!(post(1, 0, 8, &mut m), invalid);
    assert_eq!(post(1, 0x8000_0001, 8, &mut m), invalid);
    assert_eq!(post(1, 1, 241, &mut m), invalid);
    assert_eq!(post(4, 1, 7, &mut m), done(0));
    assert_eq!(
        (m.messages[0].connection_id, m.messages[0].payload()),
        (4, &b"payload"[..])
    );
    let fast_post = run(fast(code::POST_MESSAGE), all, &mem, &mut m);
    assert_eq!(fast_post, done(status::INVALID_HYPERCALL_INPUT));
    // SignalEvent fast: connection [23:0], flag [47:32], the rest reserved.
    let signal =
        |rdx: u64, m: &mut Kvmish| issue(regs(fast(code::SIGNAL_EVENT), rdx, 0), all, &mem, m);
    assert_eq!(signal(0x12_3456 | 9 << 32, &mut m), done(0));
    assert_eq!(
        signal(1 << 24, &mut m),
        done(status::INVALID_HYPERCALL_INPUT)
    );
    assert_eq!(
        signal(1 << 48, &mut m),
        done(status::INVALID_HYPERCALL_INPUT)
    );
    // Slow: one word at the input GPA.
    put(&mem, IN, &[0x42]);
    assert_eq!(run(ctl(code::SIGNAL_EVENT), all, &mem, &mut m), done(0));
    assert_eq!(m.events, vec![(0x12_3456, 9), (0x42, 0)]);
    // Without a SynIC: INVALID_HYPERCALL_INPUT (KVM), and the services are not asked.
    let mut none = Kvmish::default();
    assert_eq!(
        post(4, 1, 7, &mut none),
        done(status::INVALID_HYPERCALL_INPUT)
    );
    assert_eq!(
        signal(0x42, &mut none),
        done(status::INVALID_HYPERCALL_INPUT)
    );
    assert!(none.messages.is_empty() && none.events.is_empty());
}

#[test]
fn debug_calls_follow_kvm_order() {
    let mem = ram();
    let mut m = Minimal::default();
    let no_syndbg = Offered {
        syndbg: false,
        ..everything()
    };
    for code in [code::POST_DEBUG_DATA, code::RETRIEVE_DEBUG_DATA] {
        // Fast is INVALID_PARAMETER even before the SynDbg check.
        let answer = run(fast(code), no_syndbg, &mem, &mut m);
        assert_eq!(answer, done(status::INVALID_PARAMETER));
        let answer = run(ctl(code), no_syndbg, &mem, &mut m);
        assert_eq!(answer, done(status::INVALID_HYPERCALL_CODE));
        let answer = run(ctl(code), everything(), &mem, &mut m);
        assert_eq!(answer, done(status::OPERATION_DENIED));
    }
    let reset = run(fast(code::RESET_DEBUG_SESSION), everything(), &mem, &mut m);
    assert_eq!(reset, done(status::OPERATION_DENIED));
}

#[test]
fn names_and_table() {
    assert_eq!(name(0x2), "FlushVirtualAddressSpace");
    assert_eq!(name(0x8001), "ExtQueryCapabilities");
    assert_eq!(name(0x8002), "ExtendedHypercall(0x8002)");
    assert_eq!(name(0xbeef), "unknown(0xbeef)");
    assert_eq!(status_name(6), "ACCESS_DENIED");
    assert_eq!(status_name(0x1234), "0x1234");
    // Rows never overlap, so lookup finds each row by its first code.
    for (i, c) in CALLS.iter().enumerate() {
        for other in &CALLS[i + 1..] {
            assert!(c.codes.end() < other.codes.start() || other.codes.end() < c.codes.start());
        }
        assert!(std::ptr::eq(lookup(*c.codes.start()).unwrap(), c));
    }
}

/// xorshift64*: deterministic pseudo-random numbers without extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Services that check what reaches them and answer with pseudo-random defined statuses.
struct Checking {
    rng: Rng,
    synic: bool,
}

impl Checking {
    fn new(seed: u64, synic: bool) -> Self {
        Checking {
            rng: Rng(seed | 1),
            synic,
        }
    }
    fn answer(&mut self) -> u16 {
        let i = self.rng.below(status::ALL.len() as u64 + 4) as usize;
        status::ALL.get(i).map_or(status::SUCCESS, |s| s.0)
    }
}

impl HypercallServices for Checking {
    fn notify_long_spin_wait(&mut self, _vcpu: u32) {}
    fn flush_virtual_address(&mut self, _vcpu: u32, r: &FlushRequest<'_>) -> u16 {
        assert!(!r.processors.is_empty());
        assert!(r
            .gvas
            .is_none_or(|g| (1..=MAX_INPUT_WORDS).contains(&g.len())));
        self.answer()
    }
    fn send_ipi(&mut self, _vcpu: u32, vector: u8, targets: &VpSet) -> u16 {
        assert!(vector >= 16 && !targets.is_empty());
        self.answer()
    }
    fn synic_active(&self, _vcpu: u32) -> bool {
        self.synic
    }
    fn post_message(&mut self, _vcpu: u32, m: &PostMessage) -> u16 {
        assert!(m.payload_size <= 240 && m.message_type != 0 && m.message_type >> 31 == 0);
        assert_eq!(m.payload().len(), m.payload_size as usize);
        self.answer()
    }
    fn signal_event(&mut self, _vcpu: u32, connection_id: u32, _flag: u16) -> u16 {
        assert!(connection_id <= 0xff_ffff);
        self.answer()
    }
    fn ext_query_capabilities(&mut self, _vcpu: u32) -> Result<u64, u16> {
        match self.answer() {
            0 => Ok(self.rng.next()),
            s => Err(s),
        }
    }
    fn debug_hypercall(&mut self, _vcpu: u32, _code: u16, _in: u64, _out: u64) -> u16 {
        self.answer()
    }
}

fn random_control(rng: &mut Rng) -> u64 {
    let codes = [
        2, 3, 8, 0xB, 0x13, 0x14, 0x15, 0x5C, 0x5D, 0x69, 0x6A, 0x6B, 0x8001, 0x8020,
    ];
    let mut raw = rng.next();
    if rng.below(4) != 0 {
        raw = (raw & !0xffff) | codes[rng.below(codes.len() as u64) as usize];
    }
    if rng.below(2) == 0 {
        raw &= !CONTROL_RESERVED_MASK;
    }
    if rng.below(2) == 0 {
        // A small variable header and rep count and no rep start: these get furthest.
        raw &= !(VAR_HEADER_MASK << 17 | REP_MASK << 32 | REP_MASK << 48);
        raw |= rng.below(4) << 17 | rng.below(20) << 32;
    }
    raw
}

fn random_gpa(rng: &mut Rng) -> u64 {
    match rng.below(5) {
        0 => rng.next(),
        1 => rng.below(RAM_SIZE) & !7,
        2 => RAM_SIZE.wrapping_sub(8 * rng.below(40)),
        3 => (PAGE_SIZE * rng.below(17)).wrapping_sub(8 * rng.below(4)),
        _ => IN,
    }
}

fn random_offered(rng: &mut Rng) -> Offered {
    let spin = [0, 1, u32::MAX][rng.below(3) as usize];
    let mut word = || rng.next() as u32;
    Offered::from_cpuid(&[
        (0x4000_0003, [word(), word(), 0, word()]),
        (0x4000_0004, [word(), spin, 0, 0]),
        (0x4000_0082, [word(), 0, 0, 0]),
    ])
}

#[test]
fn random_hypercalls_never_panic_and_return_defined_statuses() {
    let mem = ram();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut page = [0u8; PAGE_SIZE as usize];
    for round in 0..40_000u32 {
        if round % 64 == 0 {
            for chunk in page.chunks_exact_mut(8) {
                // Mostly small words, so bank masks and formats hit the interesting cases.
                let v = if rng.below(2) == 0 {
                    rng.below(4)
                } else {
                    rng.next()
                };
                chunk.copy_from_slice(&v.to_le_bytes());
            }
            mem.write_slice(&page, GuestAddress(IN)).unwrap();
        }
        let offered = random_offered(&mut rng);
        let raw = random_control(&mut rng);
        let control = Control::decode(raw);
        let (rdx, r8) = (random_gpa(&mut rng), random_gpa(&mut rng));
        let xmm = [(); 6].map(|_| u128::from(rng.next()) | u128::from(rng.below(4)) << 64);
        let wanted = needs_xmm(&control, &offered);
        let given = (wanted || rng.below(8) == 0).then_some(xmm);
        let r = HypercallRegs {
            rcx: raw,
            rdx,
            r8,
            xmm: given,
        };
        let cpl = if rng.below(16) == 0 { 3 } else { 0 };
        let long_mode = rng.below(16) != 0;
        let (seed, synic) = (rng.next(), rng.below(2) == 0);
        let mut services = Checking::new(seed, synic);
        let outcome = handle(1, cpl, long_mode, &r, &offered, &mem, &mut services);
        if let Outcome::Complete(rax) = outcome {
            let st = (rax & 0xffff) as u16;
            assert!(
                status::name(st).is_some(),
                "undefined status {st:#x} for {raw:#x}"
            );
            assert_eq!(rax & !(0xffff | REP_MASK << 32), 0, "stray bits {rax:#x}");
            let reps_done = ((rax >> 32) & REP_MASK) as u16;
            assert!(reps_done == 0 || (st == 0 && reps_done == control.rep_count));
        }
        if !wanted {
            // needs_xmm is exact: when it says no, the XMM registers change nothing.
            let with = HypercallRegs {
                xmm: Some(xmm),
                ..r
            };
            let without = HypercallRegs { xmm: None, ..r };
            let mut a = Checking::new(seed, synic);
            let mut b = Checking::new(seed, synic);
            assert_eq!(
                handle(1, cpl, long_mode, &with, &offered, &mem, &mut a),
                handle(1, cpl, long_mode, &without, &offered, &mem, &mut b),
                "XMM consulted for {raw:#x} although needs_xmm said no"
            );
        }
    }
}
