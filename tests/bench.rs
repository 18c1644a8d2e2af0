//! `hvkvm bench time-read` end to end: a short run gives a table, JSON with the three series
//! and their histograms, and an SVG plot. Prints `SKIP` without a usable /dev/kvm.

use std::process::Command;

const HVKVM: &str = env!("CARGO_BIN_EXE_hvkvm");

#[test]
fn time_read_reports_three_distributions_as_json_and_a_plot() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        println!("SKIP: /dev/kvm is not usable: {e}");
        return;
    }
    let plot = std::env::temp_dir().join(format!("hvkvm-bench-test-{}.svg", std::process::id()));
    let out = Command::new(HVKVM)
        .args([
            "bench",
            "time-read",
            "--iterations",
            "3000",
            "--json",
            "--plot",
        ])
        .arg(&plot)
        .output()
        .expect("run hvkvm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    // Not a terminal: no progress output at all.
    assert!(stderr.is_empty(), "unexpected stderr: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let series = json["series"].as_array().expect("series");
    let keys: Vec<&str> = series.iter().filter_map(|s| s["key"].as_str()).collect();
    assert_eq!(keys, ["time_ref_count_msr", "tsc_page", "rdtsc"]);
    for s in series {
        assert_eq!(s["samples"], 3000, "{s}");
        let (p10, median, p90) = (
            s["p10"].as_f64().unwrap(),
            s["median"].as_f64().unwrap(),
            s["p90"].as_f64().unwrap(),
        );
        assert!(0.0 < p10 && p10 <= median && median <= p90, "{s}");
        let counted: u64 = s["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 3000);
    }
    // A read that exits to the VMM costs more than one that does not, on any host.
    let median = |i: usize| series[i]["median"].as_f64().unwrap();
    assert!(median(0) > median(1) && median(1) >= median(2), "{json}");
    assert_eq!(json["figures"][0]["key"], "msr_over_tsc_page");
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    let _ = std::fs::remove_file(&plot);
    assert!(svg.starts_with("<svg") && svg.contains("reference TSC page"));

    let table = Command::new(HVKVM)
        .args(["bench", "time-read", "--iterations", "500"])
        .output()
        .expect("run hvkvm");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert!(
        text.contains("median") && text.contains("MSR read / TSC page read"),
        "{text}"
    );
}
