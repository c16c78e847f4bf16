//! Distances on the Earth's surface.

/// A point, in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

/// The mean Earth radius, which every distance here is measured on.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance in kilometres (haversine; mean Earth radius).
pub fn haversine_km(a: GeoPoint, b: GeoPoint) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// A latitude and longitude range holding a circle: what a database can
/// select by with plain comparisons before the exact distance is checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoBox {
    pub south: f64,
    pub north: f64,
    pub west: f64,
    pub east: f64,
}

impl GeoBox {
    /// The smallest box holding every point within `km` of `centre`, but
    /// where the circle takes in a pole or crosses the antimeridian: there
    /// every longitude (a box wider than it need be, never one that leaves
    /// a point of the circle out).
    pub fn around(centre: GeoPoint, km: f64) -> Self {
        // A hair wider, so that a point on the circle itself is inside
        // however the two computations round.
        const MARGIN_DEGREES: f64 = 1e-6;
        let angle = km / EARTH_RADIUS_KM;
        let (south, north) = (
            centre.lat - angle.to_degrees() - MARGIN_DEGREES,
            centre.lat + angle.to_degrees() + MARGIN_DEGREES,
        );
        let every_longitude = Self {
            south: south.max(-90.0),
            north: north.min(90.0),
            west: -180.0,
            east: 180.0,
        };
        if south <= -90.0 || north >= 90.0 {
            return every_longitude;
        }
        // The meridians that touch the circle (not `angle / cos(lat)`,
        // which is short of them away from the equator).
        let reach = angle.sin() / centre.lat.to_radians().cos();
        if reach >= 1.0 {
            return every_longitude;
        }
        let half_width = reach.asin().to_degrees() + MARGIN_DEGREES;
        let (west, east) = (centre.lon - half_width, centre.lon + half_width);
        if west < -180.0 || east > 180.0 {
            return every_longitude;
        }
        Self {
            south,
            north,
            west,
            east,
        }
    }

    pub fn contains(&self, point: GeoPoint) -> bool {
        (self.south..=self.north).contains(&point.lat)
            && (self.west..=self.east).contains(&point.lon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Where one arrives from `from` after `km` on `bearing` (radians from
    /// north), longitude brought back into −180..180.
    fn travel(from: GeoPoint, bearing: f64, km: f64) -> GeoPoint {
        let (lat, angle) = (from.lat.to_radians(), km / EARTH_RADIUS_KM);
        let to_lat = (lat.sin() * angle.cos() + lat.cos() * angle.sin() * bearing.cos()).asin();
        let to_lon = from.lon.to_radians()
            + (bearing.sin() * angle.sin() * lat.cos())
                .atan2(angle.cos() - lat.sin() * to_lat.sin());
        let lon = (to_lon.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
        GeoPoint {
            lat: to_lat.to_degrees(),
            lon,
        }
    }

    proptest! {
        #[test]
        fn a_box_holds_every_point_of_its_circle(
            lat in -90.0..=90.0f64,
            lon in -180.0..=180.0f64,
            km in 0.1..=500.0f64,
            bearing in 0.0..std::f64::consts::TAU,
            along in 0.0..=1.0f64,
        ) {
            let centre = GeoPoint { lat, lon };
            let point = travel(centre, bearing, km * along);
            let area = GeoBox::around(centre, km);
            prop_assert!(area.contains(point), "{point:?} ({} km away) is outside {area:?}", haversine_km(centre, point));
        }
    }

    #[test]
    fn a_box_is_no_wider_than_its_circle_away_from_the_poles() {
        let amsterdam = GeoPoint {
            lat: 52.3676,
            lon: 4.9041,
        };
        let area = GeoBox::around(amsterdam, 10.0);
        let east = GeoPoint {
            lat: amsterdam.lat,
            lon: area.east,
        };
        let north = GeoPoint {
            lat: area.north,
            lon: amsterdam.lon,
        };
        assert!((haversine_km(amsterdam, east) - 10.0).abs() < 0.05);
        assert!((haversine_km(amsterdam, north) - 10.0).abs() < 0.01);
        let rotterdam = GeoPoint {
            lat: 51.9244,
            lon: 4.4777,
        };
        assert!(!area.contains(rotterdam));
    }

    #[test]
    fn a_circle_over_a_pole_or_the_antimeridian_takes_every_longitude() {
        let near_the_pole = GeoBox::around(
            GeoPoint {
                lat: 89.0,
                lon: 0.0,
            },
            200.0,
        );
        assert_eq!((near_the_pole.west, near_the_pole.east), (-180.0, 180.0));
        assert_eq!(near_the_pole.north, 90.0);
        let fiji = GeoBox::around(
            GeoPoint {
                lat: -17.7,
                lon: 179.9,
            },
            50.0,
        );
        assert_eq!((fiji.west, fiji.east), (-180.0, 180.0));
        assert!(fiji.south > -19.0 && fiji.north < -16.0);
    }

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
