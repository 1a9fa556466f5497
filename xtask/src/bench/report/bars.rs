//! The chart kit: a grouped bar chart drawn to SVG, with a linear or a
//! logarithmic y axis.

use std::path::Path;

use anyhow::Context;
use plotters::{
    coord::ranged1d::{AsRangedCoord, ValueFormatter},
    prelude::*,
};

/// A grouped bar chart.
pub(super) struct Bars<'a> {
    pub title: &'a str,
    pub x_title: &'a str,
    pub y_title: &'a str,
    /// One group of bars per `(label, values)`, named under the x axis.
    pub groups: &'a [(String, Vec<f64>)],
    /// One bar per series in each group, named in the legend (right of the
    /// plot, so that it covers no bar).
    pub series: &'a [String],
}

impl Bars<'_> {
    fn top(&self) -> f64 {
        (self.groups.iter())
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0, f64::max)
    }

    /// Draws with a linear y axis from 0.
    pub fn linear(&self, path: &Path) -> anyhow::Result<()> {
        let top = (self.top() * 1.1).max(1.0);
        self.draw(path, 0.0, 0f64..top)
    }

    /// Draws with a logarithmic y axis (for values spanning decades).
    pub fn log(&self, path: &Path) -> anyhow::Result<()> {
        let floor = (self.groups.iter())
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|&v| v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let floor = if floor.is_finite() {
            10f64.powf(floor.log10().floor())
        } else {
            1.0
        };
        let top = 10f64.powf(self.top().max(floor * 10.0).log10().ceil());
        self.draw(path, floor, (floor..top).log_scale())
    }

    fn draw<Y>(&self, path: &Path, base: f64, y: Y) -> anyhow::Result<()>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let root = SVGBackend::new(path, (1000, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, legend) = root.split_horizontally(840);
        // x in hundredths of a group (integer coordinates format their own
        // labels), each group's name at its centre.
        let n = self.groups.len() as i32;
        let centres: Vec<i32> = (0..n).map(|g| g * 100 + 50).collect();
        let mut chart = ChartBuilder::on(&plot)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d((0..n * 100).with_key_points(centres), y)
            .context("building chart")?;
        let groups = self.groups;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(self.x_title)
            .y_desc(self.y_title)
            .axis_desc_style(("sans-serif", 15))
            .x_label_style(("sans-serif", 14))
            .y_label_style(("sans-serif", 13))
            .y_label_formatter(&|v| short_number(*v))
            .x_label_formatter(&|x| {
                let g = (*x / 100) as usize;
                groups
                    .get(g)
                    .map_or(String::new(), |(name, _)| name.clone())
            })
            .draw()?;
        let width = 80 / self.series.len().max(1) as i32;
        for s in 0..self.series.len() {
            let color = Palette99::pick(s).to_rgba();
            let bars = groups
                .iter()
                .enumerate()
                .filter_map(move |(g, (_, values))| {
                    let value = *values.get(s)?;
                    let x0 = g as i32 * 100 + 10 + s as i32 * width;
                    Some(Rectangle::new(
                        [(x0, base), (x0 + width * 9 / 10, value.max(base))],
                        color.filled(),
                    ))
                });
            chart.draw_series(bars)?;
        }
        for (s, name) in self.series.iter().enumerate() {
            let color = Palette99::pick(s).to_rgba();
            let y = 60 + s as i32 * 24;
            legend.draw(&Rectangle::new([(8, y - 7), (22, y + 7)], color.filled()))?;
            legend.draw(&Text::new(
                name.as_str(),
                (30, y - 8),
                ("sans-serif", 15).into_font(),
            ))?;
        }
        root.present()?;
        Ok(())
    }
}

/// An axis label: no decimals from 10 up, then up to 3 significant digits.
fn short_number(v: f64) -> String {
    let text = if v.abs() >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    };
    match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => text,
    }
}
