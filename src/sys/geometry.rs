//! Plane geometry in normalised image coordinates (`[x, y]`, y down), shared
//! by config validation (polygons and lines) and the events rules, and the
//! overlap of two boxes that NMS, the tracker and shadow evaluation all
//! measure. Pure.

/// Intersection over union of two `[x1, y1, x2, y2]` boxes; 0 for empty or
/// non-finite ones.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 && inter.is_finite() { inter / union } else { 0.0 }
}

/// Twice the signed area of `(a, b, p)`: > 0 when `p` is on the right of
/// `a → b` as drawn on screen (y down), < 0 on its left, 0 on the line.
pub fn cross(a: [f32; 2], b: [f32; 2], p: [f32; 2]) -> f32 {
    (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
}

/// Even-odd point-in-polygon test.
pub fn inside(polygon: &[[f32; 2]], p: [f32; 2]) -> bool {
    let mut inside = false;
    let n = polygon.len();
    for i in 0..n {
        let (a, b) = (polygon[i], polygon[(i + n - 1) % n]);
        if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0] {
            inside = !inside;
        }
    }
    inside
}

/// Whether segments `p1-p2` and `q1-q2` properly intersect (touching at an
/// end or overlapping collinearly does not count).
pub fn segments_cross(p1: [f32; 2], p2: [f32; 2], q1: [f32; 2], q2: [f32; 2]) -> bool {
    cross(q1, q2, p1) * cross(q1, q2, p2) < 0.0 && cross(p1, p2, q1) * cross(p1, p2, q2) < 0.0
}

/// The first pair of non-adjacent edges of `polygon` that cross, as edge
/// indices (edge `i` runs from vertex `i` to vertex `i + 1`).
pub fn self_intersection(polygon: &[[f32; 2]]) -> Option<(usize, usize)> {
    let n = polygon.len();
    for i in 0..n {
        for j in i + 2..n {
            // Edges 0 and n-1 share vertex 0.
            if i == 0 && j == n - 1 {
                continue;
            }
            if segments_cross(polygon[i], polygon[(i + 1) % n], polygon[j], polygon[(j + 1) % n]) {
                return Some((i, j));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x0: f32, y0: f32, x1: f32, y1: f32) -> Vec<[f32; 2]> {
        vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    }

    #[test]
    fn point_in_polygon_on_a_square_and_a_concave_shape() {
        let sq = square(0.2, 0.2, 0.8, 0.8);
        assert!(inside(&sq, [0.5, 0.5]));
        assert!(!inside(&sq, [0.1, 0.5]));
        assert!(!inside(&sq, [0.5, 0.9]));
        // An L: the notch at the top right is outside.
        let l = vec![[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]];
        assert!(inside(&l, [0.25, 0.25]));
        assert!(!inside(&l, [0.75, 0.25]));
        assert!(inside(&l, [0.75, 0.75]));
    }

    #[test]
    fn self_intersection_is_found_in_a_bow_tie_only() {
        assert_eq!(self_intersection(&[[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), Some((0, 2)));
        assert_eq!(self_intersection(&square(0.0, 0.0, 1.0, 1.0)), None);
        assert_eq!(self_intersection(&[[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]]), None);
    }

    #[test]
    fn the_sign_of_cross_says_the_side_on_screen() {
        // Walking down the screen (y grows), screen-left (x smaller) is on the right hand.
        assert!(cross([0.5, 0.0], [0.5, 1.0], [0.2, 0.5]) > 0.0);
        assert!(cross([0.5, 0.0], [0.5, 1.0], [0.8, 0.5]) < 0.0);
    }
}
