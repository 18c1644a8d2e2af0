//! Fixed-layout structs, declared once and checked at compile time.
//!
//! `layout_struct!` takes one row per member (`name: type = offset, "TlfsName";`) and emits:
//! - the `#[repr(C)]` struct;
//! - `const_assert_eq!(offset_of!(..), offset)` for every member and for the total size, so the
//!   golden offsets written in the row (derived from the TLFS, see the crate docs) are checked
//!   against what the compiler actually lays out;
//! - a `MEMBERS` table and a const check that the members tile the struct with no implicit
//!   padding, which is what lets `from_bytes`/`to_bytes` cover every byte without `unsafe`;
//! - `ZERO`, `from_bytes`, `write_to` and `to_bytes`, all little-endian field by field.

use crate::AccessError;

/// One member of a fixed-layout struct, for tests, tools and the JSON dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Rust field name (Linux/KVM spelling where one exists).
    pub name: &'static str,
    /// Name in the TLFS definition, if the TLFS page names this member.
    pub tlfs_name: Option<&'static str>,
    /// Byte offset from the start of the struct.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

impl Member {
    /// True for reserved and padding members, which must be zero.
    pub const fn is_reserved(&self) -> bool {
        let n = self.name.as_bytes();
        n.len() >= 4 && n[0] == b'r' && n[1] == b's' && n[2] == b'v' && n[3] == b'd'
    }
}

/// A little-endian plain value that can be a member of a layout struct.
pub(crate) trait LeField: Sized + Copy {
    /// Size in bytes.
    const SIZE: usize;
    /// The all-zero value.
    const ZERO: Self;
    /// Decode from the first `SIZE` bytes of `src`; `None` when `src` is shorter.
    fn read_le(src: &[u8]) -> Option<Self>;
    /// Encode into the first `SIZE` bytes of `dst`; `None` when `dst` is shorter.
    fn write_le(&self, dst: &mut [u8]) -> Option<()>;
}

macro_rules! impl_le_int {
    ($($t:ty),*) => {$(
        impl LeField for $t {
            const SIZE: usize = core::mem::size_of::<$t>();
            const ZERO: Self = 0;
            fn read_le(src: &[u8]) -> Option<Self> {
                Some(<$t>::from_le_bytes(src.get(..Self::SIZE)?.try_into().ok()?))
            }
            fn write_le(&self, dst: &mut [u8]) -> Option<()> {
                dst.get_mut(..Self::SIZE)?.copy_from_slice(&self.to_le_bytes());
                Some(())
            }
        }
    )*};
}
impl_le_int!(u8, u16, u32, u64);

impl<T: LeField, const N: usize> LeField for [T; N] {
    const SIZE: usize = T::SIZE * N;
    const ZERO: Self = [T::ZERO; N];
    fn read_le(src: &[u8]) -> Option<Self> {
        let mut out = Self::ZERO;
        for (slot, chunk) in out
            .iter_mut()
            .zip(src.get(..Self::SIZE)?.chunks_exact(T::SIZE))
        {
            *slot = T::read_le(chunk)?;
        }
        Some(out)
    }
    fn write_le(&self, dst: &mut [u8]) -> Option<()> {
        for (item, chunk) in self
            .iter()
            .zip(dst.get_mut(..Self::SIZE)?.chunks_exact_mut(T::SIZE))
        {
            item.write_le(chunk)?;
        }
        Some(())
    }
}

/// `Some(name)` for a one-element list, `None` for an empty one (optional TLFS name in a row).
pub(crate) const fn optional_name(names: &[&'static str]) -> Option<&'static str> {
    match names {
        [name, ..] => Some(name),
        [] => None,
    }
}

/// Compile-time check that `members` are in offset order and tile `[0, size)` exactly: no gap
/// (implicit padding) and no overlap.
pub(crate) const fn assert_tiled(members: &[Member], size: usize) {
    let mut next = 0;
    let mut i = 0;
    while i < members.len() {
        assert!(
            members[i].offset == next,
            "layout member is not contiguous with the previous one"
        );
        next += members[i].size;
        i += 1;
    }
    assert!(
        next == size,
        "layout members do not add up to the struct size"
    );
}

/// Error for a buffer shorter than the struct.
pub(crate) const fn short_buffer(needed: usize, available: usize) -> AccessError {
    AccessError::OutOfBounds {
        offset: 0,
        len: needed,
        available,
    }
}

/// Declares a fixed-layout struct; see the module docs.
macro_rules! layout_struct {
    (
        $(#[$smeta:meta])*
        pub struct $name:ident, size = $size:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $off:literal $(, $tlfs:literal)?;
            )*
        }
    ) => {
        $(#[$smeta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name {
            $(
                $(#[doc = concat!("TLFS `", $tlfs, "`.")])?
                $(#[doc = $doc])*
                #[doc = concat!("Offset ", stringify!($off), ".")]
                pub $field: $ty,
            )*
        }

        static_assertions::const_assert_eq!(core::mem::size_of::<$name>(), $size);
        $( static_assertions::const_assert_eq!(memoffset::offset_of!($name, $field), $off); )*
        const _: () = $crate::layout::assert_tiled($name::MEMBERS, $size);

        impl $name {
            /// Size of the structure in bytes.
            pub const SIZE: usize = $size;

            /// The all-zero value (every reserved member must stay zero).
            pub const ZERO: Self = Self {
                $( $field: <$ty as $crate::layout::LeField>::ZERO, )*
            };

            /// Every member in offset order, reserved ones included.
            pub const MEMBERS: &'static [$crate::layout::Member] = &[
                $(
                    $crate::layout::Member {
                        name: stringify!($field),
                        tlfs_name: $crate::layout::optional_name(&[$($tlfs)?]),
                        offset: $off,
                        size: <$ty as $crate::layout::LeField>::SIZE,
                    },
                )*
            ];

            /// Decodes the structure from the first [`Self::SIZE`] bytes of `bytes`
            /// (little-endian), e.g. from a copy of guest memory.
            ///
            /// # Errors
            /// [`AccessError::OutOfBounds`](crate::AccessError::OutOfBounds) when `bytes` is
            /// shorter than [`Self::SIZE`].
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, $crate::AccessError> {
                use $crate::layout::LeField;
                let short = $crate::layout::short_buffer($size, bytes.len());
                Ok(Self {
                    $(
                        $field: bytes
                            .get($off..)
                            .and_then(<$ty as LeField>::read_le)
                            .ok_or(short)?,
                    )*
                })
            }

            /// Encodes the structure into the first [`Self::SIZE`] bytes of `bytes`.
            ///
            /// # Errors
            /// [`AccessError::OutOfBounds`](crate::AccessError::OutOfBounds) when `bytes` is
            /// shorter than [`Self::SIZE`]; nothing is written then.
            pub fn write_to(&self, bytes: &mut [u8]) -> Result<(), $crate::AccessError> {
                use $crate::layout::LeField;
                let available = bytes.len();
                let dst = bytes
                    .get_mut(..$size)
                    .ok_or($crate::layout::short_buffer($size, available))?;
                $(
                    dst.get_mut($off..)
                        .and_then(|d| self.$field.write_le(d))
                        .ok_or($crate::layout::short_buffer($size, available))?;
                )*
                Ok(())
            }

            /// The structure as its [`Self::SIZE`] little-endian bytes.
            pub fn to_bytes(&self) -> [u8; $size] {
                let mut out = [0u8; $size];
                // Cannot fail: `out` is exactly `SIZE` bytes long.
                let _ = self.write_to(&mut out);
                out
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::ZERO
            }
        }
    };
}
pub(crate) use layout_struct;
