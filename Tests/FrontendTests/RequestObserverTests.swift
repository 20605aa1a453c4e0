import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing
@testable import Frontend

/// What the gateway learns from the end of a streamed answer.
struct RequestObserverTests {
    static func observer(_ reports: NIOLockedValueBox<[PromptReport]>) -> RequestObserver {
        RequestObserver(metrics: GatewayMetrics(), model: "m", endpoint: .chatCompletions, started: .now, admitted: .now,
                        statusCode: 200, cacheReport: { report in reports.withLockedValue { $0.append(report) } })
    }

    static let token = #"data: {"choices":[{"index":0,"delta":{"content":" wörd"}}]}"# + "\n\n"
    static let last = #"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4000},"timings":{"cache_n":5,"prompt_n":4,"prompt_ms":12.5}}"# + "\n\n"

    @Test func theLastEventOfALongStreamIsReadEvenWhenSplitAcrossChunks() {
        let reports = NIOLockedValueBox<[PromptReport]>([])
        let observer = Self.observer(reports)
        for _ in 0..<4000 { observer.streamed(ByteBuffer(string: Self.token)) }
        // the last event in pieces, cut inside a multi-byte character of the chunk before it
        let bytes = Array((Self.token + Self.last + "data: [DONE]\n\n").utf8)
        for piece in stride(from: 0, to: bytes.count, by: 7) {
            observer.streamed(ByteBuffer(bytes: bytes[piece..<min(piece + 7, bytes.count)]))
        }
        observer.finish(outcome: "ok")
        #expect(reports.withLockedValue { $0 } == [PromptReport(tokens: 9, cached: 5, computeSeconds: 0.0125)])
    }

    @Test func aStreamWithoutFiguresReportsNothing() {
        let reports = NIOLockedValueBox<[PromptReport]>([])
        let observer = Self.observer(reports)
        for _ in 0..<100 { observer.streamed(ByteBuffer(string: Self.token)) }
        observer.streamed(ByteBuffer(string: String(repeating: "x", count: 20_000)))   // one chunk larger than the tail kept
        observer.finish(outcome: "ok")
        observer.finish(outcome: "ok")   // once only
        #expect(reports.withLockedValue { $0 }.isEmpty)
    }
}
