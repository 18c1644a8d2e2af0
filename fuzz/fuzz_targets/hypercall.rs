//! The hypercall input decoder: control word, fast/XMM registers, VP sets, rep lists and
//! input blocks read from guest memory, driven through `hypercall::handle` with every
//! combination of offered features.
//!
//! Input layout: a header of register values and CPUID words, then the bytes of a small guest
//! RAM (two regions with a hole between them, so GPAs can miss RAM). Checked: no panic, the
//! status is a defined TLFS status, a success reports exactly the rep count, and every request
//! a service sees was validated.
#![no_main]

use hvkvm::hyperv::user::hypercall::{
    self, status, Control, FlushRequest, HypercallRegs, HypercallServices, Offered, Outcome,
    PostMessage, VpSet,
};
use hvkvm_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Low RAM: four pages at 0. High RAM: one page at 0x10000. Everything else is a hole.
const LOW: (u64, usize) = (0, 0x4000);
const HIGH: (u64, usize) = (0x1_0000, 0x1000);

/// Services that check what reaches them and answer with the statuses the input chooses.
struct Checking<'a> {
    answers: Input<'a>,
    synic: bool,
}

impl Checking<'_> {
    fn answer(&mut self) -> u16 {
        let i = usize::from(self.answers.u8());
        status::ALL.get(i).map_or(status::SUCCESS, |s| s.0)
    }
}

impl HypercallServices for Checking<'_> {
    fn notify_long_spin_wait(&mut self, _vcpu: u32) {}
    fn flush_virtual_address(&mut self, _vcpu: u32, r: &FlushRequest<'_>) -> u16 {
        assert!(!r.processors.is_empty(), "flush with an empty VP set");
        assert!(r.gvas.is_none_or(|g| !g.is_empty() && g.len() <= 512));
        self.answer()
    }
    fn send_ipi(&mut self, _vcpu: u32, vector: u8, targets: &VpSet) -> u16 {
        assert!(vector >= 16, "IPI vector {vector} below 16 reached the service");
        assert!(!targets.is_empty(), "IPI to an empty set reached the service");
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
            status::SUCCESS => Ok(self.answers.u64()),
            s => Err(s),
        }
    }
    fn debug_hypercall(&mut self, _vcpu: u32, _code: u16, _in: u64, _out: u64) -> u16 {
        self.answer()
    }
}

/// A GPA: raw (anywhere: RAM, the hole, past the end, misaligned), or (mode bit set) folded
/// into the first 2 KiB, where the input's own bytes are, so more inputs reach real data.
fn gpa(raw: u64, fold: bool) -> u64 {
    if fold {
        raw % 0x800
    } else {
        raw
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let vcpu = u32::from(input.u8());
    let cpl = input.u8() & 3;
    let long_mode = flags & 1 == 0;
    let rcx = input.u64();
    let rdx = gpa(input.u64(), flags & 2 != 0);
    let r8 = gpa(input.u64(), flags & 4 != 0);
    let xmm = (flags & 8 != 0).then(|| {
        let mut x = [0u128; 6];
        for v in &mut x {
            *v = u128::from(input.u64()) | u128::from(input.u64()) << 64;
        }
        x
    });
    let offered = Offered::from_cpuid(&[
        (0x4000_0003, [input.u32(), input.u32(), 0, input.u32()]),
        (0x4000_0004, [input.u32(), input.u32(), 0, 0]),
        (0x4000_0082, [input.u32(), 0, 0, 0]),
    ]);
    let answers = Input(input.bytes(16));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(LOW.0), LOW.1),
        (GuestAddress(HIGH.0), HIGH.1),
    ])
    .expect("small guest RAM");
    let ram = input.rest();
    let (low, high) = ram.split_at(ram.len().min(LOW.1));
    mem.write_slice(low, GuestAddress(LOW.0)).expect("fits");
    mem.write_slice(&high[..high.len().min(HIGH.1)], GuestAddress(HIGH.0))
        .expect("fits");

    let regs = HypercallRegs { rcx, rdx, r8, xmm };
    let mut services = Checking {
        answers,
        synic: flags & 16 != 0,
    };
    match hypercall::handle(vcpu, cpl, long_mode, &regs, &offered, &mem, &mut services) {
        Outcome::InvalidOpcode => {}
        Outcome::Complete(rax) => {
            let code = (rax & 0xffff) as u16;
            assert!(
                status::name(code).is_some(),
                "undefined status {code:#x} for control {rcx:#x}"
            );
            assert_eq!(rax & !(0xffff | 0xfff << 32), 0, "stray result bits: {rax:#x}");
            let reps = ((rax >> 32) & 0xfff) as u16;
            let expected = if code == status::SUCCESS {
                Control::decode(rcx).rep_count
            } else {
                0
            };
            assert_eq!(reps, expected, "reps completed for control {rcx:#x}");
        }
    }
});
