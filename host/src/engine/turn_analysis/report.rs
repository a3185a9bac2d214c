//! Scoring: the driver's end-of-turn decisions against the labelled gaps, and the report (a
//! table for people, JSON with the whole trace for tuning decision rules offline).
//!
//! A decision at file time `t` falls in the gap whose `[after_s, resume_s)` holds it (the final
//! silence runs to the end of the file). Inside a `pause` it is a cut-off; inside a `turn_end`
//! the first one is the gap's decision (late when the silence fallback made it); inside a speech
//! region it is a mid-speech end. A `turn_end` gap with no decision is missed.
//!
//! One exception: a decision that lands after speech resumed, for an end of speech the listener
//! placed inside a `pause`, is that pause's cut-off (flagged `after_resume`): the silence caused
//! it, and the reply would start over the caller's next words. VAD lags the labelled edges by
//! 0.1–0.3 s, so short pauses are decided this way.

use std::fmt::Write as _;

use serde::Serialize;

use super::labels::{FileLabels, GapLabel};
use crate::engine::listener::EndReason;

/// One `TurnEnded`, on the file's clock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// File seconds at which the listener ended the turn.
    pub t: f64,
    pub reason: EndReason,
    /// The turn's final transcript at that moment.
    pub text: String,
    /// Where the listener placed the end of speech (file seconds).
    pub speech_ended: Option<f64>,
}

/// A VAD stop and Smart Turn's answer for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StopTrace {
    /// File seconds of the stop (the end of VAD's stop window).
    pub t: f64,
    /// `None` when inference failed (`error` says why).
    pub probability: Option<f32>,
    pub complete: Option<bool>,
    /// Wall-clock inference time, added to the verdict's arrival on the virtual clock.
    pub inference_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A final transcript the driver delivered (one per `Finalize`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinalTrace {
    /// File seconds of the `Finalize`.
    pub finalize_t: f64,
    /// File seconds the final reached the listener.
    pub delivered_t: f64,
    pub text: String,
    /// Seconds of audio it covers.
    pub audio_s: f64,
}

/// What the driver saw in one file.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FileRun {
    pub duration_s: f64,
    pub decisions: Vec<Decision>,
    pub stops: Vec<StopTrace>,
    pub finals: Vec<FinalTrace>,
    /// Wall-clock seconds the file took.
    pub wall_s: f64,
}

/// What became of one labelled gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `pause` with no decision: right.
    Held,
    /// `pause` with a decision in it.
    CutOff,
    /// `turn_end` decided by a model or the transcript.
    Decided,
    /// `turn_end` decided by the silence fallback or the watchdog: it waited for a timer.
    Late,
    /// `turn_end` with no decision before speech resumed or the file ended.
    Missed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GapScore {
    pub after_s: f64,
    pub resume_s: Option<f64>,
    pub label: GapLabel,
    pub doubtful: bool,
    pub before: String,
    pub outcome: Outcome,
    /// The first decision inside the gap.
    pub decision: Option<Decision>,
    /// Decision time − gap start (end of speech), ms.
    pub latency_ms: Option<f64>,
    /// Every decision inside the gap (more than one: turns opened by noise in the silence).
    pub decisions: usize,
    /// The cut-off landed after speech resumed (see the module docs).
    pub after_resume: bool,
    /// Smart Turn at each VAD stop inside the gap.
    pub stops: Vec<StopTrace>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileScore {
    pub file: String,
    pub duration_s: f64,
    pub wall_s: f64,
    pub gaps: Vec<GapScore>,
    /// Decisions while the labelled speaker was talking.
    pub mid_speech: Vec<Decision>,
    /// Decisions in no speech region and no labelled gap (before the first word).
    pub unlabelled: Vec<Decision>,
    pub stops: Vec<StopTrace>,
    pub finals: Vec<FinalTrace>,
}

/// Counts over a set of gaps.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub pause_gaps: usize,
    pub cut_offs: usize,
    pub cut_off_rate: Option<f64>,
    pub turn_end_gaps: usize,
    /// `turn_end` gaps that are a file's final silence (the listener should always end there).
    pub final_turn_ends: usize,
    pub decided: usize,
    pub late: usize,
    /// Late ends in final silences (the late-end rate's numerator).
    pub late_final: usize,
    /// `late_final / final_turn_ends`.
    pub late_end_rate: Option<f64>,
    pub missed: usize,
    /// Missed final silences: the turn never ended.
    pub missed_final: usize,
    pub mid_speech: usize,
    pub unlabelled: usize,
    /// Over decided and late `turn_end` gaps.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub stt_latency_ms: f64,
    pub files: Vec<FileScore>,
    pub all: Totals,
    /// The same without the gaps flagged `doubtful`.
    pub confident: Totals,
    pub wall_s: f64,
}

/// Places every decision of `run` against `labels`.
pub fn score_file(labels: &FileLabels, run: FileRun) -> FileScore {
    let mut gaps: Vec<GapScore> = labels
        .gaps
        .iter()
        .map(|g| GapScore {
            after_s: g.after_s,
            resume_s: g.resume_s,
            label: g.label,
            doubtful: g.doubtful,
            before: g.before.clone(),
            outcome: if g.label == GapLabel::Pause { Outcome::Held } else { Outcome::Missed },
            decision: None,
            latency_ms: None,
            decisions: 0,
            after_resume: false,
            stops: Vec::new(),
        })
        .collect();
    let gap_end = |g: &GapScore| g.resume_s.unwrap_or(f64::INFINITY);
    let find_gap = |gaps: &[GapScore], t: f64| gaps.iter().position(|g| t >= g.after_s && t < gap_end(g));
    for stop in &run.stops {
        if let Some(i) = find_gap(&gaps, stop.t) {
            gaps[i].stops.push(stop.clone());
        }
    }
    let mut mid_speech = Vec::new();
    let mut unlabelled = Vec::new();
    for d in run.decisions.iter().filter(|d| d.t <= run.duration_s) {
        if let Some(i) = find_gap(&gaps, d.t) {
            let gap = &mut gaps[i];
            gap.decisions += 1;
            if gap.decision.is_none() {
                gap.outcome = match (gap.label, d.reason) {
                    (GapLabel::Pause, _) => Outcome::CutOff,
                    (GapLabel::TurnEnd, EndReason::SilenceFallback | EndReason::Watchdog) => Outcome::Late,
                    (GapLabel::TurnEnd, EndReason::SmartTurn | EndReason::SttOnly | EndReason::Words) => {
                        Outcome::Decided
                    }
                };
                gap.latency_ms = Some((d.t - gap.after_s) * 1000.0);
                gap.decision = Some(d.clone());
            }
        } else if let Some(i) = d
            .speech_ended
            .and_then(|ended| find_gap(&gaps, ended))
            .filter(|&i| gaps[i].label == GapLabel::Pause && d.t >= gaps[i].after_s)
        {
            let gap = &mut gaps[i];
            gap.decisions += 1;
            if gap.decision.is_none() {
                gap.outcome = Outcome::CutOff;
                gap.after_resume = true;
                gap.latency_ms = Some((d.t - gap.after_s) * 1000.0);
                gap.decision = Some(d.clone());
            }
        } else if labels.speech.iter().any(|&[s, e]| d.t >= s && d.t < e) {
            mid_speech.push(d.clone());
        } else {
            unlabelled.push(d.clone());
        }
    }
    FileScore {
        file: labels.file.clone(),
        duration_s: run.duration_s,
        wall_s: run.wall_s,
        gaps,
        mid_speech,
        unlabelled,
        stops: run.stops,
        finals: run.finals,
    }
}

/// Totals over `files`; `with_doubtful` false leaves out the gaps flagged doubtful.
pub fn totals(files: &[FileScore], with_doubtful: bool) -> Totals {
    let mut t = Totals::default();
    let mut latencies = Vec::new();
    for f in files {
        t.mid_speech += f.mid_speech.len();
        t.unlabelled += f.unlabelled.len();
        for g in f.gaps.iter().filter(|g| with_doubtful || !g.doubtful) {
            let is_final = g.resume_s.is_none();
            match g.label {
                GapLabel::Pause => {
                    t.pause_gaps += 1;
                    t.cut_offs += usize::from(g.outcome == Outcome::CutOff);
                }
                GapLabel::TurnEnd => {
                    t.turn_end_gaps += 1;
                    t.final_turn_ends += usize::from(is_final);
                    match g.outcome {
                        Outcome::Decided => t.decided += 1,
                        Outcome::Late => {
                            t.late += 1;
                            t.late_final += usize::from(is_final);
                        }
                        Outcome::Missed => {
                            t.missed += 1;
                            t.missed_final += usize::from(is_final);
                        }
                        Outcome::Held | Outcome::CutOff => {}
                    }
                    latencies.extend(g.latency_ms);
                }
            }
        }
    }
    t.cut_off_rate = ratio(t.cut_offs, t.pause_gaps);
    t.late_end_rate = ratio(t.late_final, t.final_turn_ends);
    latencies.sort_by(f64::total_cmp);
    t.latency_p50_ms = percentile(&latencies, 50.0);
    t.latency_p95_ms = percentile(&latencies, 95.0);
    t
}

fn ratio(n: usize, of: usize) -> Option<f64> {
    (of > 0).then(|| n as f64 / of as f64)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Report {
    pub fn new(files: Vec<FileScore>, stt_latency_ms: f64, wall_s: f64) -> Report {
        let all = totals(&files, true);
        let confident = totals(&files, false);
        Report { stt_latency_ms, files, all, confident, wall_s }
    }

    /// The table: one line per file, then the totals with and without doubtful gaps.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<34} {:>5} {:>6} {:>8} {:>7} {:>5} {:>6} {:>4} {:>12}",
            "file", "s", "pauses", "cut-offs", "t-ends", "late", "missed", "mid", "latency ms"
        );
        for f in &self.files {
            let t = totals(std::slice::from_ref(f), true);
            let lat: Vec<String> = f.gaps.iter().filter_map(|g| g.latency_ms).map(|ms| format!("{ms:.0}")).collect();
            let _ = writeln!(
                out,
                "{:<34} {:>5.1} {:>6} {:>8} {:>7} {:>5} {:>6} {:>4} {:>12}",
                f.file,
                f.duration_s,
                t.pause_gaps,
                t.cut_offs,
                t.turn_end_gaps,
                t.late,
                t.missed,
                t.mid_speech,
                lat.join(",")
            );
        }
        for (name, t) in [("all gaps", &self.all), ("without doubtful", &self.confident)] {
            let _ = writeln!(out, "\n{name}:");
            let _ = writeln!(out, "  cut-offs    {}/{} = {}", t.cut_offs, t.pause_gaps, pct(t.cut_off_rate));
            let _ = writeln!(
                out,
                "  late ends   {}/{} final silences = {} ({} late in all {} turn_end gaps)",
                t.late_final,
                t.final_turn_ends,
                pct(t.late_end_rate),
                t.late,
                t.turn_end_gaps
            );
            let _ = writeln!(
                out,
                "  turn_end    {} decided, {} late, {} missed ({} of them final silences)",
                t.decided, t.late, t.missed, t.missed_final
            );
            let _ = writeln!(out, "  mid-speech  {} (+{} outside any labelled region)", t.mid_speech, t.unlabelled);
            let _ = writeln!(
                out,
                "  latency     p50 {} / p95 {} ms (decision − end of speech, turn_end gaps)",
                ms(t.latency_p50_ms),
                ms(t.latency_p95_ms)
            );
        }
        let _ = writeln!(
            out,
            "\nSTT latency {:.0} ms (virtual); {:.1} s wall for {} files",
            self.stt_latency_ms,
            self.wall_s,
            self.files.len()
        );
        out
    }
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{:.1} %", r * 100.0))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.0}"))
}

#[cfg(test)]
mod tests {
    use super::super::labels::Gap;
    use super::*;

    fn gap(after_s: f64, resume_s: Option<f64>, label: GapLabel, doubtful: bool) -> Gap {
        Gap { after_s, resume_s, label, before: String::new(), after: None, note: String::new(), doubtful }
    }

    /// Speech 0–1, 1.3–2, 2.8–3.5, 4.0–5.0; gaps: pause, turn_end, pause (doubtful), final turn_end.
    fn labels() -> FileLabels {
        FileLabels {
            file: "x.wav".into(),
            source: String::new(),
            speaker: String::new(),
            words: String::new(),
            speech: vec![[0.0, 1.0], [1.3, 2.0], [2.8, 3.5], [4.0, 5.0]],
            gaps: vec![
                gap(1.0, Some(1.3), GapLabel::Pause, false),
                gap(2.0, Some(2.8), GapLabel::TurnEnd, false),
                gap(3.5, Some(4.0), GapLabel::Pause, true),
                gap(5.0, None, GapLabel::TurnEnd, false),
            ],
        }
    }

    fn decision(t: f64, reason: EndReason) -> Decision {
        Decision { t, reason, text: format!("at {t}"), speech_ended: None }
    }

    fn run(decisions: Vec<Decision>) -> FileRun {
        FileRun { duration_s: 7.0, decisions, ..FileRun::default() }
    }

    #[test]
    fn decisions_are_placed_in_their_gaps() {
        let score = score_file(
            &labels(),
            run(vec![
                decision(0.5, EndReason::SmartTurn),       // mid-speech
                decision(1.25, EndReason::SmartTurn),      // cut-off in the first pause
                decision(2.4, EndReason::SmartTurn),       // the turn_end, 400 ms
                decision(2.6, EndReason::Watchdog),        // a second one in the same gap
                decision(6.6, EndReason::SilenceFallback), // late in the final silence
                decision(7.5, EndReason::SmartTurn),       // after the file: not counted
            ]),
        );
        let outcomes: Vec<Outcome> = score.gaps.iter().map(|g| g.outcome).collect();
        assert_eq!(outcomes, [Outcome::CutOff, Outcome::Decided, Outcome::Held, Outcome::Late]);
        assert_eq!(score.gaps[1].decisions, 2);
        assert_eq!(score.gaps[1].decision.as_ref().map(|d| d.text.as_str()), Some("at 2.4"), "the first counts");
        assert!((score.gaps[1].latency_ms.unwrap() - 400.0).abs() < 1e-6);
        assert_eq!(score.mid_speech.len(), 1);

        let t = totals(std::slice::from_ref(&score), true);
        assert_eq!((t.pause_gaps, t.cut_offs, t.turn_end_gaps, t.final_turn_ends), (2, 1, 2, 1));
        assert_eq!((t.decided, t.late, t.late_final, t.missed, t.mid_speech), (1, 1, 1, 0, 1));
        assert_eq!(t.cut_off_rate, Some(0.5));
        assert_eq!(t.late_end_rate, Some(1.0));
        assert!((t.latency_p50_ms.unwrap() - 400.0).abs() < 1e-6);
        assert!((t.latency_p95_ms.unwrap() - 1600.0).abs() < 1e-6);

        let confident = totals(std::slice::from_ref(&score), false);
        assert_eq!((confident.pause_gaps, confident.cut_offs), (1, 1), "the doubtful pause is left out");
    }

    #[test]
    fn no_decisions_miss_every_turn_end_and_cut_nothing() {
        let score = score_file(&labels(), run(Vec::new()));
        let t = totals(std::slice::from_ref(&score), true);
        assert_eq!((t.cut_offs, t.decided, t.late, t.missed, t.missed_final), (0, 0, 0, 2, 1));
        assert_eq!(t.latency_p50_ms, None);
        assert_eq!(t.late_end_rate, Some(0.0));
    }

    #[test]
    fn a_decision_at_the_edge_of_speech_belongs_to_what_starts_there() {
        let score =
            score_file(&labels(), run(vec![decision(1.3, EndReason::SmartTurn), decision(2.0, EndReason::SttOnly)]));
        assert_eq!(score.gaps[0].outcome, Outcome::Held, "at resume_s the speaker is talking again");
        assert_eq!(score.mid_speech.len(), 1);
        assert_eq!(score.gaps[1].outcome, Outcome::Decided);
        assert_eq!(score.gaps[1].latency_ms, Some(0.0));
    }

    #[test]
    fn a_pause_decided_after_speech_resumed_is_its_cut_off() {
        let late = |t, ended| Decision { speech_ended: Some(ended), ..decision(t, EndReason::SmartTurn) };
        let score = score_file(
            &labels(),
            // Ended at 1.1 (in the first pause), landed at 1.5 (speech again); then a VAD end of
            // speech in the turn_end gap landing after resume (not a decision of that gap), and
            // one placed inside speech.
            run(vec![late(1.5, 1.1), late(2.9, 2.5), late(4.5, 4.2)]),
        );
        assert_eq!(score.gaps[0].outcome, Outcome::CutOff);
        assert!(score.gaps[0].after_resume);
        assert_eq!(score.gaps[1].outcome, Outcome::Missed, "a turn_end needs its decision before resume_s");
        assert_eq!(score.mid_speech.len(), 2);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn stops_are_traced_in_their_gap_and_the_table_names_the_totals() {
        let mut r = run(vec![decision(2.4, EndReason::SmartTurn)]);
        r.stops.push(StopTrace {
            t: 2.2,
            probability: Some(0.8),
            complete: Some(true),
            inference_ms: 40.0,
            error: None,
        });
        let score = score_file(&labels(), r);
        assert_eq!(score.gaps[1].stops.len(), 1);
        let report = Report::new(vec![score], 150.0, 1.0);
        let table = report.table();
        assert!(table.contains("cut-offs    0/2 = 0.0 %"), "{table}");
        assert!(table.contains("latency     p50 400 / p95 400 ms"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        let p = json["files"][0]["gaps"][1]["stops"][0]["probability"].as_f64().unwrap();
        assert!((p - 0.8).abs() < 1e-6, "{p}");
        assert_eq!(json["files"][0]["gaps"][1]["decision"]["reason"], "smart_turn");
    }
}
