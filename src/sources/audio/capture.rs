//! Microphone capture through `cpal` on ALSA.
//!
//! Owns finding the input device (`default` is ALSA's default PCM, which
//! honours `~/.asoundrc` and `/etc/asound.conf`; any other name is matched
//! against the ALSA PCM names and descriptions cpal lists), choosing a
//! stream configuration, and turning every callback's buffer into mono
//! `f32` at the device rate. The callback runs on cpal's own thread and
//! must not block: it hands the samples to a closure (the daemon's pushes
//! into the drop-oldest [`super::ring::SampleRing`]).

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SampleFormat, SizedSample, StreamConfig};

use super::AudioError;
use super::resample::mixdown;

/// What was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputInfo {
    /// ALSA PCM name (`default`, `hw:CARD=…`, `pulse`, …).
    pub pcm: String,
    pub description: String,
    pub sample_rate: u32,
    pub channels: u16,
    pub format: String,
}

/// A running capture stream; capture stops when it is dropped.
pub struct Input {
    _stream: cpal::Stream,
    pub info: InputInfo,
}

/// Sample formats we convert, best first. `I16` first: it is what most
/// microphones and ALSA plugins produce natively, so no conversion happens
/// before ours.
const FORMATS: [SampleFormat; 6] =
    [SampleFormat::I16, SampleFormat::F32, SampleFormat::I32, SampleFormat::U16, SampleFormat::U8, SampleFormat::I8];

/// Rates tried in order when a device's range allows several: the model's
/// own rate first (no resampling), then the common hardware rates.
const RATES: [u32; 6] = [16_000, 48_000, 44_100, 32_000, 22_050, 8_000];

fn device_err(device: &str, what: &'static str) -> impl Fn(cpal::Error) -> AudioError + use<> {
    let device = device.to_string();
    move |e| AudioError::Device { device: device.clone(), what, message: e.to_string() }
}

/// Finds the input device named `name` on cpal's default (ALSA) host.
pub fn find_device(name: &str) -> Result<cpal::Device, AudioError> {
    let host = cpal::default_host();
    if name.is_empty() || name == "default" {
        return host.default_input_device().ok_or_else(|| AudioError::NoDevice {
            name: name.to_string(),
            available: "(the host has no default input)".into(),
        });
    }
    let devices: Vec<cpal::Device> = host.devices().map_err(device_err(name, "listing ALSA devices"))?.collect();
    let pcm = |d: &cpal::Device| d.id().map(|i| i.id().to_string()).unwrap_or_default();
    let desc = |d: &cpal::Device| d.description().map(|x| x.name().to_string()).unwrap_or_default();
    if let Some(d) = devices.iter().find(|d| pcm(d) == name).or_else(|| devices.iter().find(|d| desc(d) == name)) {
        return Ok(d.clone());
    }
    let available = devices.iter().map(|d| format!("{:?} ({})", pcm(d), desc(d))).collect::<Vec<_>>().join(", ");
    Err(AudioError::NoDevice { name: name.to_string(), available })
}

/// Lists input-capable ALSA PCMs as `(pcm name, description)`.
pub fn list_inputs() -> Vec<(String, String)> {
    let Ok(devices) = cpal::default_host().devices() else { return Vec::new() };
    devices
        .filter(|d| d.description().map(|x| x.supports_input()).unwrap_or(true))
        .map(|d| {
            (
                d.id().map(|i| i.id().to_string()).unwrap_or_default(),
                d.description().map(|x| x.name().to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

/// Picks a configuration: 16 kHz if the device can, mono if it can, the
/// best sample format we convert.
pub fn choose_config(device: &cpal::Device, name: &str) -> Result<(StreamConfig, SampleFormat), AudioError> {
    let ranges: Vec<_> =
        device.supported_input_configs().map_err(device_err(name, "querying input configurations"))?.collect();
    let mut best: Option<(u32, StreamConfig, SampleFormat)> = None;
    for r in &ranges {
        let Some(fmt_rank) = FORMATS.iter().position(|f| *f == r.sample_format()) else { continue };
        let Some((rate_rank, rate)) =
            RATES.iter().enumerate().find(|(_, rate)| (r.min_sample_rate()..=r.max_sample_rate()).contains(rate))
        else {
            continue;
        };
        let mono = r.channels() == 1;
        // Lower is better: the rate matters most, then mono, then format.
        let score = (rate_rank as u32) * 100 + if mono { 0 } else { 10 } + fmt_rank as u32;
        if best.as_ref().is_none_or(|(s, _, _)| score < *s) {
            let config =
                StreamConfig { channels: r.channels(), sample_rate: *rate, buffer_size: cpal::BufferSize::Default };
            best = Some((score, config, r.sample_format()));
        }
    }
    if let Some((_, c, f)) = best {
        return Ok((c, f));
    }
    // Nothing in our lists: take the device's default if we can convert it.
    let d = device.default_input_config().map_err(device_err(name, "reading the default input configuration"))?;
    if FORMATS.contains(&d.sample_format()) {
        return Ok((d.config(), d.sample_format()));
    }
    Err(AudioError::Unsupported {
        device: name.to_string(),
        message: format!(
            "no usable input configuration (offered: {})",
            ranges
                .iter()
                .map(|r| format!(
                    "{:?} {}ch {}-{} Hz",
                    r.sample_format(),
                    r.channels(),
                    r.min_sample_rate(),
                    r.max_sample_rate()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Opens `name` and starts capturing. `on_samples` gets mono `f32` samples
/// at `info.sample_rate` from cpal's thread; `on_error` gets stream errors
/// (a lost device), after which no more samples come.
pub fn open_input<D, E>(name: &str, on_samples: D, on_error: E) -> Result<Input, AudioError>
where
    D: FnMut(&[f32]) + Send + 'static,
    E: FnMut(String) + Send + 'static,
{
    let device = find_device(name)?;
    let (config, format) = choose_config(&device, name)?;
    let stream = match format {
        SampleFormat::I16 => build::<i16, _, _>(&device, &config, name, on_samples, on_error),
        SampleFormat::F32 => build::<f32, _, _>(&device, &config, name, on_samples, on_error),
        SampleFormat::I32 => build::<i32, _, _>(&device, &config, name, on_samples, on_error),
        SampleFormat::U16 => build::<u16, _, _>(&device, &config, name, on_samples, on_error),
        SampleFormat::U8 => build::<u8, _, _>(&device, &config, name, on_samples, on_error),
        SampleFormat::I8 => build::<i8, _, _>(&device, &config, name, on_samples, on_error),
        other => {
            return Err(AudioError::Unsupported {
                device: name.to_string(),
                message: format!("sample format {other:?}"),
            });
        }
    }?;
    stream.play().map_err(device_err(name, "starting the stream"))?;
    let info = InputInfo {
        pcm: device.id().map(|i| i.id().to_string()).unwrap_or_else(|_| name.to_string()),
        description: device.description().map(|d| d.name().to_string()).unwrap_or_default(),
        sample_rate: config.sample_rate,
        channels: config.channels,
        format: format!("{format:?}"),
    };
    Ok(Input { _stream: stream, info })
}

fn build<T, D, E>(
    device: &cpal::Device,
    config: &StreamConfig,
    name: &str,
    mut on_samples: D,
    mut on_error: E,
) -> Result<cpal::Stream, AudioError>
where
    T: SizedSample,
    f32: FromSample<T>,
    D: FnMut(&[f32]) + Send + 'static,
    E: FnMut(String) + Send + 'static,
{
    let channels = config.channels as usize;
    let mut as_f32: Vec<f32> = Vec::new();
    let mut mono: Vec<f32> = Vec::new();
    device
        .build_input_stream::<T, _, _>(
            *config,
            move |data: &[T], _: &cpal::InputCallbackInfo| {
                as_f32.clear();
                as_f32.extend(data.iter().map(|s| f32::from_sample(*s)));
                mono.clear();
                mixdown(&as_f32, channels, &mut mono);
                on_samples(&mono);
            },
            move |e| on_error(e.to_string()),
            None,
        )
        .map_err(device_err(name, "building the input stream"))
}
