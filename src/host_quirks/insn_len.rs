//! Lengths of the few instructions that open a Linux exception entry, so a breakpoint can be
//! stepped over by moving it to the next instruction (the emulator ignores RFLAGS.RF).

/// The length of the instruction at the start of `bytes`, for the forms exception entry
/// stubs begin with; `None` for anything else.
pub fn entry_insn_len(bytes: &[u8]) -> Option<usize> {
    match bytes {
        // endbr64
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => Some(4),
        // clac / stac
        [0x0f, 0x01, 0xca | 0xcb, ..] => Some(3),
        // nop
        [0x90, ..] => Some(1),
        // push %rbp..%rdi / push %r8..%r15
        [0x50..=0x57, ..] => Some(1),
        [0x41, 0x50..=0x57, ..] => Some(2),
        // multi-byte nops: [66] 0f 1f /0 with a ModRM-encoded memory operand
        [0x66, rest @ ..] => entry_insn_len(rest)
            .filter(|_| rest.first() == Some(&0x0f))
            .map(|l| l + 1),
        [0x0f, 0x1f, modrm, rest @ ..] => nop_modrm_len(*modrm, rest).map(|l| l + 2),
        // cld
        [0xfc, ..] => Some(1),
        _ => None,
    }
}

/// Length of a ModRM byte plus SIB and displacement for `0f 1f /0` NOPs.
fn nop_modrm_len(modrm: u8, rest: &[u8]) -> Option<usize> {
    let md = modrm >> 6;
    let rm = modrm & 7;
    let sib = usize::from(md != 3 && rm == 4);
    let disp = match (md, rm) {
        (0, 5) => 4,
        (0, 4) if rest.first().is_some_and(|s| s & 7 == 5) => 4,
        (0, _) | (3, _) => 0,
        (1, _) => 1,
        _ => 4,
    };
    Some(1 + sib + disp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_entry_instructions() {
        assert_eq!(entry_insn_len(&[0xf3, 0x0f, 0x1e, 0xfa]), Some(4));
        assert_eq!(entry_insn_len(&[0x0f, 0x01, 0xca]), Some(3));
        assert_eq!(entry_insn_len(&[0x0f, 0x1f, 0x00]), Some(3)); // nopl (%rax)
        assert_eq!(entry_insn_len(&[0x0f, 0x1f, 0x40, 0x00]), Some(4)); // nopl 0(%rax)
        assert_eq!(entry_insn_len(&[0x0f, 0x1f, 0x44, 0x00, 0x00]), Some(5));
        assert_eq!(
            entry_insn_len(&[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]),
            Some(6)
        );
        assert_eq!(entry_insn_len(&[0x0f, 0x1f, 0x80, 0, 0, 0, 0]), Some(7));
        assert_eq!(
            entry_insn_len(&[0x0f, 0x1f, 0x84, 0x00, 0, 0, 0, 0]),
            Some(8)
        );
        assert_eq!(entry_insn_len(&[0x41, 0x57]), Some(2));
        assert_eq!(entry_insn_len(&[0xe8, 0, 0, 0, 0]), None);
        assert_eq!(entry_insn_len(&[]), None);
    }
}
