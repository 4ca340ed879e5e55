//! Small statistics shared by the bench's sections: medians and the spread of per-round
//! ratios.

use serde::Serialize;

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// A median with the range it came from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// `None` for no values.
pub fn spread(v: &[f64]) -> Option<Spread> {
    (!v.is_empty()).then(|| Spread {
        median: median(v),
        min: min(v),
        max: max(v),
    })
}

impl std::fmt::Display for Spread {
    /// `1.000 (0.980-1.020)`, or just the value when every round gave the same.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{:.3}", self.median)
        } else {
            write!(f, "{:.3} ({:.3}-{:.3})", self.median, self.min, self.max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn spread_keeps_the_range() {
        let s = spread(&[1.0, 0.9, 1.2]).unwrap();
        assert_eq!((s.median, s.min, s.max), (1.0, 0.9, 1.2));
        assert_eq!(s.to_string(), "1.000 (0.900-1.200)");
        assert_eq!(spread(&[2.0]).unwrap().to_string(), "2.000");
        assert!(spread(&[]).is_none());
    }
}
