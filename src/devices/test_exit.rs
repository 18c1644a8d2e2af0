//! The test-exit port: a guest `out` of byte N ends the VM and hvkvm exits with status N.

use super::{GuestRequest, PioDevice, PioOutcome};

/// The device behind [`super::TEST_EXIT_PORT`].
#[derive(Debug, Default)]
pub struct TestExit;

impl PioDevice for TestExit {
    fn read(&mut self, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u16, data: &[u8]) -> PioOutcome {
        // For a 16- or 32-bit `out` the status is the low byte (AL), as for an 8-bit one.
        PioOutcome::Request(GuestRequest::TestExit(data.first().copied().unwrap_or(0)))
    }
}
