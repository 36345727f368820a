//! Rise/fall thresholds (HAProxy's `rise` and `fall`): a server flips only after N consecutive results
//! that disagree with its state, so one lost check never takes it down and one lucky check never
//! brings it back.

/// The verdict of a series of checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
}

impl Thresholds {
    /// Starts in state `up`; `rise` and `fall` are at least 1.
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        Self { rise: rise.max(1), fall: fall.max(1), up, streak: 0 }
    }

    /// The current verdict.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Feeds one result; returns the new state when it flips.
    pub fn observe(&mut self, pass: bool) -> Option<bool> {
        if pass == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = pass;
        self.streak = 0;
        Some(pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_consecutive_failures_only() {
        let mut t = Thresholds::new(2, 3, true);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a pass resets the streak");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert!(!t.is_up());
        assert_eq!(t.observe(false), None, "already down");
    }

    #[test]
    fn rises_after_rise_consecutive_passes_only() {
        let mut t = Thresholds::new(2, 3, false);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None, "a failure resets the streak");
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(true));
        assert!(t.is_up());
    }

    #[test]
    fn thresholds_of_one_flip_at_once() {
        let mut t = Thresholds::new(1, 1, true);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(true), Some(true));
    }

    proptest::proptest! {
        /// Whatever the sequence, the state flips exactly when the last `fall` (or `rise`) results
        /// all disagree with it, and never otherwise.
        #[test]
        fn flips_only_on_full_streaks(results in proptest::collection::vec(proptest::bool::ANY, 0..200),
                                      rise in 1u32..5, fall in 1u32..5) {
            let mut t = Thresholds::new(rise, fall, true);
            let (mut up, mut streak) = (true, 0u32);
            for pass in results {
                let flipped = t.observe(pass);
                if pass == up { streak = 0 } else { streak += 1 }
                let needed = if up { fall } else { rise };
                if streak == needed { up = pass; streak = 0; proptest::prop_assert_eq!(flipped, Some(pass)); }
                else { proptest::prop_assert_eq!(flipped, None); }
                proptest::prop_assert_eq!(t.is_up(), up);
            }
        }
    }
}
