import Foundation

/// The cold-start bench's output: a table, one JSON object, and an SVG chart.
public struct ColdStartReport: Sendable {
    public let model: String
    public let rows: [ColdStartBenchmark.Row]

    public init(model: String, rows: [ColdStartBenchmark.Row]) {
        self.model = model
        self.rows = rows
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    struct Medians {
        var ready: Double?, ttft: Double?, baselineReady: Double?, baselineTTFT: Double?
    }

    func medians(_ row: ColdStartBenchmark.Row) -> Medians {
        Medians(ready: Self.median(row.strata.map(\.ready)), ttft: Self.median(row.strata.map(\.ttft)),
                baselineReady: Self.median(row.baseline.map(\.ready)), baselineTTFT: Self.median(row.baseline.map(\.ttft)))
    }

    public func table() -> String {
        func cell(_ value: Double?) -> String { value.map { String(format: "%.3f", $0) } ?? "-" }
        var rows = [["STATE", "READY s", "TTFT s", "BASELINE READY s", "BASELINE TTFT s", "READY vs BASELINE"]]
        for row in self.rows {
            let m = medians(row)
            let ratio: String = if let r = m.ready, let b = m.baselineReady, b > 0 { String(format: "%.2fx", r / b) } else { "-" }
            rows.append([row.state.rawValue, cell(m.ready), cell(m.ttft), cell(m.baselineReady), cell(m.baselineTTFT), ratio])
        }
        let runs = self.rows.map(\.strata.count).max() ?? 0
        return (["\(model): medians of \(runs) run(s); ready = until the runtime answers its health check (staging included), TTFT = a fixed streamed request"]
            + StatusClient.table(rows)).joined(separator: "\n")
    }

    /// `{"model": …, "states": {"remote": {"ready_seconds", "ttft_seconds", "baseline_ready_seconds", …}, …}}`.
    public func json() throws -> String {
        var states: [String: Any] = [:]
        for row in rows {
            let m = medians(row)
            states[row.state.rawValue] = [
                "ready_seconds": m.ready ?? NSNull(), "ttft_seconds": m.ttft ?? NSNull(),
                "baseline_ready_seconds": m.baselineReady ?? NSNull(), "baseline_ttft_seconds": m.baselineTTFT ?? NSNull(),
                "runs": row.strata.count,
            ] as [String: Any]
        }
        let data = try JSONSerialization.data(withJSONObject: ["model": model, "states": states], options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    /// Horizontal bars, two per state (Strata, the runtime by itself): time to ready, then time
    /// to first token on top, in seconds on one shared scale.
    public func svg() -> String {
        let width = 760.0, left = 150.0, right = 90.0, barHeight = 18.0, groupGap = 22.0, top = 56.0
        let plotWidth = width - left - right
        let longest = rows.flatMap { row -> [Double] in
            let m = medians(row)
            return [(m.ready ?? 0) + (m.ttft ?? 0), (m.baselineReady ?? 0) + (m.baselineTTFT ?? 0)]
        }.max() ?? 1
        let scale = plotWidth / max(longest, 1e-9)
        let height = top + Double(rows.count) * (2 * barHeight + groupGap) + 40
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(left)" y="22" font-size="15" font-weight="bold">Cold start of \(escape(model)): seconds until servable (medians)</text>
        <rect x="\(left)" y="32" width="12" height="12" fill="#1f6fb4"/><text x="\(left + 16)" y="42">Strata: ready</text>
        <rect x="\(left + 110)" y="32" width="12" height="12" fill="#9ec5ea"/><text x="\(left + 126)" y="42">+ first token</text>
        <rect x="\(left + 220)" y="32" width="12" height="12" fill="#7f7f7f"/><text x="\(left + 236)" y="42">runtime alone: ready</text>
        <rect x="\(left + 370)" y="32" width="12" height="12" fill="#cfcfcf"/><text x="\(left + 386)" y="42">+ first token</text>

        """
        var y = top
        for row in rows {
            let m = medians(row)
            out += "<text x=\"\(left - 10)\" y=\"\(y + barHeight + 4)\" text-anchor=\"end\" font-weight=\"bold\">\(row.state.rawValue)</text>\n"
            for (ready, ttft, dark, light) in [(m.ready, m.ttft, "#1f6fb4", "#9ec5ea"), (m.baselineReady, m.baselineTTFT, "#7f7f7f", "#cfcfcf")] {
                if let ready {
                    let a = ready * scale, b = (ttft ?? 0) * scale
                    out += "<rect x=\"\(left)\" y=\"\(y)\" width=\"\(max(a, 1))\" height=\"\(barHeight)\" fill=\"\(dark)\"/>\n"
                    out += "<rect x=\"\(left + a)\" y=\"\(y)\" width=\"\(b)\" height=\"\(barHeight)\" fill=\"\(light)\"/>\n"
                    out += "<text x=\"\(left + a + b + 6)\" y=\"\(y + 13)\">\(String(format: "%.2f s", ready + (ttft ?? 0)))</text>\n"
                } else {
                    out += "<text x=\"\(left + 4)\" y=\"\(y + 13)\" fill=\"#7f7f7f\">no baseline</text>\n"
                }
                y += barHeight
            }
            y += groupGap
        }
        out += "<line x1=\"\(left)\" y1=\"\(top - 4)\" x2=\"\(left)\" y2=\"\(y - groupGap + 4)\" stroke=\"black\"/>\n</svg>\n"
        return out
    }

    private func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
    }
}
