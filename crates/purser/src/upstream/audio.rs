//! Audio uploads (`/v1/audio/transcriptions`): how long a file plays, and what a transcription
//! answer says it used. Pure, no I/O. Invariants: a WAV file's length is read exactly from its
//! header; any other container is estimated from its size — pessimistically (32 kbit/s, longer
//! than any common encoding) when reserving budget, typically (128 kbit/s) when billing an
//! answer that reported nothing; a reported duration or token count always wins.

use serde_json::Value;

/// Bytes per second assumed for a compressed file when reserving (32 kbit/s).
const RESERVE_BYTES_PER_SEC: u64 = 4_000;
/// Bytes per second assumed for a compressed file when billing without a report (128 kbit/s).
const BILL_BYTES_PER_SEC: u64 = 16_000;

/// Milliseconds of audio in a RIFF/WAVE file (its `data` chunk over the `fmt ` byte rate).
pub fn wav_duration_ms(file: &[u8]) -> Option<u64> {
    if file.len() < 12 || &file[..4] != b"RIFF" || &file[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12usize;
    let mut byte_rate: Option<u64> = None;
    while at + 8 <= file.len() {
        let id = &file[at..at + 4];
        let size = u32::from_le_bytes(file[at + 4..at + 8].try_into().ok()?) as usize;
        let body = at + 8;
        if id == b"fmt " && body + 12 <= file.len() {
            byte_rate = Some(u32::from_le_bytes(file[body + 8..body + 12].try_into().ok()?) as u64);
        } else if id == b"data" {
            // A streamed WAV may say 0 or 0xFFFFFFFF: what is there is what plays.
            let present = file.len().saturating_sub(body);
            let size = if size == 0 || size > present {
                present
            } else {
                size
            };
            let rate = byte_rate.filter(|r| *r > 0)?;
            return Some((size as u64).saturating_mul(1000) / rate);
        }
        at = body.saturating_add(size).saturating_add(size & 1);
    }
    None
}

/// Milliseconds to reserve for a file: exact for WAV, else the pessimistic estimate.
pub fn reserve_ms(file: &[u8]) -> u64 {
    wav_duration_ms(file)
        .unwrap_or_else(|| (file.len() as u64).saturating_mul(1000) / RESERVE_BYTES_PER_SEC)
        .max(1)
}

/// Milliseconds to bill when the answer reported nothing: exact for WAV, else typical.
pub fn billed_ms(file: &[u8]) -> u64 {
    wav_duration_ms(file)
        .unwrap_or_else(|| (file.len() as u64).saturating_mul(1000) / BILL_BYTES_PER_SEC)
        .max(1)
}

/// What a transcription answer reports it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// `usage: {type: "tokens", input_tokens, output_tokens}` (gpt-4o-transcribe).
    Tokens { input: u64, output: u64 },
    /// `usage: {type: "duration", seconds}` (whisper-1), or verbose_json's `duration`.
    Millis(u64),
    /// Nothing (text, srt and vtt answers; servers that report nothing).
    Nothing,
}

/// What a transcription answer's body reports (`body` as received; not JSON is `Nothing`).
pub fn reported(body: &[u8]) -> Reported {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Reported::Nothing;
    };
    let secs = |x: &Value| {
        x.as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| (s * 1000.0).round() as u64)
    };
    let u = &v["usage"];
    match u["type"].as_str() {
        Some("tokens") => {
            return Reported::Tokens {
                input: u["input_tokens"].as_u64().unwrap_or(0),
                output: u["output_tokens"].as_u64().unwrap_or(0),
            };
        }
        Some("duration") => {
            if let Some(ms) = secs(&u["seconds"]) {
                return Reported::Millis(ms);
            }
        }
        _ => {}
    }
    secs(&v["duration"]).map_or(Reported::Nothing, Reported::Millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mono 16-bit PCM WAV of `ms` milliseconds at 16 kHz.
    pub fn wav(ms: u64) -> Vec<u8> {
        let data = (ms * 32) as u32; // 16000 samples/s × 2 bytes
        let mut f = Vec::new();
        f.extend_from_slice(b"RIFF");
        f.extend_from_slice(&(36 + data).to_le_bytes());
        f.extend_from_slice(b"WAVEfmt ");
        f.extend_from_slice(&16u32.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&16000u32.to_le_bytes());
        f.extend_from_slice(&32000u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&16u16.to_le_bytes());
        f.extend_from_slice(b"LIST");
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(b"abc\0");
        f.extend_from_slice(b"data");
        f.extend_from_slice(&data.to_le_bytes());
        f.resize(f.len() + data as usize, 0);
        f
    }

    #[test]
    fn wav_length_is_read_from_the_header() {
        assert_eq!(wav_duration_ms(&wav(2500)), Some(2500));
        assert_eq!(reserve_ms(&wav(2500)), 2500);
        assert_eq!(billed_ms(&wav(1000)), 1000);
        let mut truncated = wav(2000);
        truncated.truncate(truncated.len() - 32_000);
        assert_eq!(
            wav_duration_ms(&truncated),
            Some(1000),
            "what is there plays"
        );
        assert_eq!(wav_duration_ms(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(wav_duration_ms(b"ID3 not a wav"), None);
        // Other containers: 32 kbit/s to reserve, 128 kbit/s to bill.
        let mp3 = vec![0u8; 160_000];
        assert_eq!(reserve_ms(&mp3), 40_000);
        assert_eq!(billed_ms(&mp3), 10_000);
        assert_eq!(reserve_ms(&[]), 1);
    }

    #[test]
    fn answers_report_tokens_or_duration() {
        assert_eq!(
            reported(
                br#"{"text":"x","usage":{"type":"tokens","input_tokens":20,"output_tokens":6}}"#
            ),
            Reported::Tokens {
                input: 20,
                output: 6
            }
        );
        assert_eq!(
            reported(br#"{"text":"x","usage":{"type":"duration","seconds":3}}"#),
            Reported::Millis(3000)
        );
        assert_eq!(
            reported(br#"{"text":"x","duration":2.4567}"#),
            Reported::Millis(2457)
        );
        assert_eq!(reported(b"plain text answer"), Reported::Nothing);
        assert_eq!(
            reported(br#"{"text":"x","duration":-1}"#),
            Reported::Nothing
        );
    }
}
