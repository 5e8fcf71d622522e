//! Values by driver, kept inline: a node's CSINode registrations and its count of
//! volumes per driver are read for each of thousands of candidate nodes per scheduling
//! request, and a hash map of their own would cost a cache miss per node each.

use smallvec::SmallVec;

use super::drivers::DriverId;

/// A small map from driver to value, sorted by driver, inline for up to two drivers
/// (a config rarely has more): equal contents compare equal whatever the insertion
/// order, and building from an iterator keeps the last value given for a driver, as
/// collecting into a map does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerDriver<T>(SmallVec<[(DriverId, T); 2]>);

impl<T> Default for PerDriver<T> {
    fn default() -> Self {
        PerDriver(SmallVec::new())
    }
}

impl<T> PerDriver<T> {
    fn position(&self, driver: DriverId) -> Result<usize, usize> {
        self.0.binary_search_by_key(&driver, |(d, _)| *d)
    }

    /// The driver's value.
    pub fn get(&self, driver: DriverId) -> Option<&T> {
        let i = self.position(driver).ok()?;
        Some(&self.0[i].1)
    }

    /// The driver's value, to change.
    pub fn get_mut(&mut self, driver: DriverId) -> Option<&mut T> {
        let i = self.position(driver).ok()?;
        Some(&mut self.0[i].1)
    }

    /// Whether the driver has a value.
    pub fn contains(&self, driver: DriverId) -> bool {
        self.position(driver).is_ok()
    }

    /// Sets the driver's value, replacing any.
    pub fn insert(&mut self, driver: DriverId, value: T) {
        match self.position(driver) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (driver, value)),
        }
    }

    /// The driver's value, made the default first if it had none.
    pub fn or_default(&mut self, driver: DriverId) -> &mut T
    where
        T: Default,
    {
        let i = match self.position(driver) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (driver, T::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    /// The drivers and their values, by driver.
    pub fn iter(&self) -> impl Iterator<Item = (DriverId, &T)> {
        self.0.iter().map(|(d, v)| (*d, v))
    }

    /// How many drivers have a value.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No driver has a value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> FromIterator<(DriverId, T)> for PerDriver<T> {
    fn from_iter<I: IntoIterator<Item = (DriverId, T)>>(items: I) -> Self {
        let mut map = PerDriver::default();
        for (driver, value) in items {
            map.insert(driver, value);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_by_driver_whatever_the_order_given_the_last_value_kept() {
        let a: PerDriver<u32> = [(DriverId(3), 1), (DriverId(0), 2), (DriverId(3), 5)]
            .into_iter()
            .collect();
        let b: PerDriver<u32> = [(DriverId(0), 2), (DriverId(3), 5)].into_iter().collect();
        assert_eq!(a, b);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [(DriverId(0), &2), (DriverId(3), &5)]
        );
        assert_eq!(a.get(DriverId(3)), Some(&5));
        assert_eq!(a.get(DriverId(1)), None);
        assert!(a.contains(DriverId(0)) && !a.contains(DriverId(2)));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn or_default_inserts_in_order_and_get_mut_changes_in_place() {
        let mut m: PerDriver<u32> = PerDriver::default();
        assert!(m.is_empty());
        *m.or_default(DriverId(5)) += 1;
        *m.or_default(DriverId(1)) += 2;
        *m.or_default(DriverId(5)) += 1;
        *m.get_mut(DriverId(1)).expect("present") -= 1;
        assert_eq!(m.get_mut(DriverId(9)), None);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [(DriverId(1), &1), (DriverId(5), &2)]
        );
    }

    #[test]
    fn stays_inline_for_two_drivers() {
        let m: PerDriver<Option<i64>> = [(DriverId(0), None), (DriverId(1), Some(8))]
            .into_iter()
            .collect();
        assert!(!m.0.spilled());
    }
}
