//! Echo: every byte back unchanged.

use super::{Action, Handler};

/// Sends every byte back unchanged, in order, until the peer closes.
#[derive(Copy, Clone, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Action {
        out.extend_from_slice(input);
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;

    #[test]
    fn echoes_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        assert_eq!(Echo.on_data(&all, &mut out), Action::Continue);
        assert_eq!(out, all);
        assert_eq!(Protocol::Echo.expected(&all), all);
    }
}
