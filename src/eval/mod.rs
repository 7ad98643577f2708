pub mod dataset;
pub mod plot;
pub mod report;
pub mod run;
