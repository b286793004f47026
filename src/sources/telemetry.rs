//! System telemetry sampling: CPU, memory, disk, temperatures, uptime.
//!
//! Owns reading `sysinfo` and `/sys`; produces record bodies, stores nothing.
//! A sensor that is missing is reported once, then silently left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sysinfo::{Disks, ProcessesToUpdate, System};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    pub cpu_percent: f32,
    pub cpu_per_core: Vec<f32>,
    pub load_avg: [f64; 3],
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub disk_total_bytes: Option<u64>,
    pub disk_free_bytes: Option<u64>,
    /// SoC temperature from the first `cpu-thermal`-like zone.
    pub soc_temp_c: Option<f32>,
    /// Every readable thermal zone, by its `type`.
    pub temps_c: BTreeMap<String, f32>,
    pub uptime_s: u64,
    pub process_rss_bytes: Option<u64>,
}

/// What a telemetry record carries: the system sample plus the daemon's
/// own health (so the cloud sees retention drops and losses).
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryRecord {
    #[serde(flatten)]
    pub sample: Sample,
    pub outbox: OutboxFigures,
    pub inference_total: u64,
    pub records_lost: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxFigures {
    pub pending: u64,
    pub bytes: u64,
    /// Records dropped by retention (bound or TTL), per stream.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Commits that failed for lack of space.
    pub space_errors: u64,
}

impl OutboxFigures {
    pub fn of(outbox: &crate::outbox::Outbox) -> Self {
        let c = outbox.counters();
        Self {
            space_errors: outbox.space_errors(),
            pending: c.iter().map(|x| x.pending).sum(),
            bytes: c.iter().map(|x| x.bytes).sum(),
            dropped: crate::record::Stream::ALL.iter().map(|s| (s.as_str(), c[*s as usize].dropped)).collect(),
        }
    }
}

pub struct Sampler {
    sys: Option<System>,
    disks: Option<Disks>,
    state_dir: PathBuf,
    thermal_root: PathBuf,
    warned_no_thermal: bool,
    warned_no_disk: bool,
}

impl Sampler {
    pub fn new(state_dir: &Path) -> Self {
        let sys = System::new()
            .map(|mut s| {
                s.refresh_cpu_usage();
                s
            })
            .map_err(
                |e| tracing::warn!(error = %e, "telemetry: system statistics unavailable; CPU and memory left out"),
            )
            .ok();
        let disks = Disks::new_with_refreshed_list()
            .map_err(|e| tracing::warn!(error = %e, "telemetry: disk list unavailable"))
            .ok();
        Self {
            sys,
            disks,
            state_dir: std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf()),
            thermal_root: PathBuf::from("/sys/class/thermal"),
            warned_no_thermal: false,
            warned_no_disk: false,
        }
    }

    pub fn sample(&mut self) -> Sample {
        let pid = sysinfo::get_current_pid().ok();
        let (mut cpu, mut cores, mut mem_total, mut mem_used, mut rss) = (0.0, Vec::new(), 0, 0, None);
        if let Some(sys) = self.sys.as_mut() {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            if let Some(pid) = pid {
                sys.refresh_processes(ProcessesToUpdate::Some(&[pid]), true);
                rss = sys.process(pid).map(|p| p.memory());
            }
            cpu = sys.global_cpu_usage();
            cores = sys.cpus().iter().map(|c| c.usage()).collect();
            mem_total = sys.total_memory();
            mem_used = sys.used_memory();
        }
        if let Some(d) = self.disks.as_mut() {
            d.refresh(true);
        }
        let load = System::load_average().map(|l| [l.one, l.five, l.fifteen]).unwrap_or([0.0; 3]);
        let (disk_total, disk_free) = self.disk_of_state_dir();
        if disk_total.is_none() && !self.warned_no_disk {
            tracing::warn!(dir = %self.state_dir.display(), "telemetry: no disk found for the state directory; disk figures left out");
            self.warned_no_disk = true;
        }
        let temps = read_thermal_zones(&self.thermal_root);
        if temps.is_empty() && !self.warned_no_thermal {
            tracing::warn!(root = %self.thermal_root.display(), "telemetry: no readable thermal zone; temperatures left out");
            self.warned_no_thermal = true;
        }
        let soc = temps
            .iter()
            .find(|(k, _)| k.contains("cpu") || k.contains("soc"))
            .or_else(|| temps.iter().next())
            .map(|(_, v)| *v);
        Sample {
            cpu_percent: cpu,
            cpu_per_core: cores,
            load_avg: load,
            mem_total_bytes: mem_total,
            mem_used_bytes: mem_used,
            disk_total_bytes: disk_total,
            disk_free_bytes: disk_free,
            soc_temp_c: soc,
            temps_c: temps,
            uptime_s: System::uptime().unwrap_or(0),
            process_rss_bytes: rss,
        }
    }

    /// The disk whose mount point is the longest prefix of the state dir.
    fn disk_of_state_dir(&self) -> (Option<u64>, Option<u64>) {
        let Some(disks) = self.disks.as_ref() else { return (None, None) };
        disks
            .iter()
            .filter(|d| self.state_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| (Some(d.total_space()), Some(d.available_space())))
            .unwrap_or((None, None))
    }
}

/// `type` → °C for every `thermal_zone*` under `root` (millidegrees in sysfs).
pub fn read_thermal_zones(root: &Path) -> BTreeMap<String, f32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("thermal_zone") {
            continue;
        }
        let kind = std::fs::read_to_string(e.path().join("type")).map(|s| s.trim().to_string()).unwrap_or(name);
        if let Some(milli) =
            std::fs::read_to_string(e.path().join("temp")).ok().and_then(|s| s.trim().parse::<i64>().ok())
        {
            out.insert(kind, milli as f32 / 1000.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thermal_zones_are_read_in_degrees_by_type() {
        let d = tempfile::tempdir().unwrap();
        let z = d.path().join("thermal_zone0");
        std::fs::create_dir(&z).unwrap();
        std::fs::write(z.join("type"), "cpu-thermal\n").unwrap();
        std::fs::write(z.join("temp"), "51234\n").unwrap();
        let bad = d.path().join("thermal_zone1");
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("temp"), "garbage").unwrap();
        let t = read_thermal_zones(d.path());
        assert_eq!(t.len(), 1);
        assert!((t["cpu-thermal"] - 51.234).abs() < 1e-3);
    }

    #[test]
    fn sample_has_memory_and_uptime() {
        let d = tempfile::tempdir().unwrap();
        let s = Sampler::new(d.path()).sample();
        assert!(s.mem_total_bytes > 0 && s.uptime_s > 0);
        assert!(!s.cpu_per_core.is_empty());
    }
}
