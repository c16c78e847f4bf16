//! Distances on the Earth's surface.

/// A point, in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

/// Great-circle distance in kilometres (haversine; mean Earth radius).
pub fn haversine_km(a: GeoPoint, b: GeoPoint) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0088;
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_distances() {
        let amsterdam = GeoPoint {
            lat: 52.3676,
            lon: 4.9041,
        };
        let rotterdam = GeoPoint {
            lat: 51.9244,
            lon: 4.4777,
        };
        let d = haversine_km(amsterdam, rotterdam);
        assert!((d - 57.0).abs() < 1.0, "{d}");
        assert_eq!(haversine_km(amsterdam, amsterdam), 0.0);
        let antipode = GeoPoint {
            lat: -52.3676,
            lon: 4.9041 - 180.0,
        };
        assert!((haversine_km(amsterdam, antipode) - 20015.0).abs() < 5.0);
    }
}
