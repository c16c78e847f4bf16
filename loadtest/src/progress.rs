//! A progress bar on the terminal while a run is under way. It draws only
//! when standard error is a terminal, so logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `total` steps of `what` ("joins", "requests", "clients").
pub fn bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {what} ({{per_sec}}, {{eta}} left)"
        ))
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar
}
