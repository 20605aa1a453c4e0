import Foundation
import Glibc
import Testing
@testable import TierStore

/// A writer process killed with SIGKILL mid-stream: every block it acknowledged as durable is
/// found again byte-identical, and nothing corrupt is ever returned.
struct CrashRecoveryTests {
    static var writerPath: String {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let candidates = [bundle, bundle.deletingLastPathComponent(), bundle.deletingLastPathComponent().deletingLastPathComponent()]
        return candidates.map { $0.appendingPathComponent("strata-fault-writer").path }
            .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "strata-fault-writer"
    }

    static func payload(_ i: Int) -> [UInt8] {
        var state = UInt64(i) &* 0x9E37_79B9_7F4A_7C15 &+ 1
        return (0..<(3000 + (i % 7) * 5000)).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    @Test(arguments: IOEngineContractTests.kinds)
    func acknowledgedDurableBlocksSurviveSIGKILL(kind: IOEngineKind) async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for round in 0..<3 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Self.writerPath)
            process.arguments = [dir, kind.rawValue]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            // read acknowledgements until enough have come, then kill mid-stream
            var acked: Set<Int> = []
            var text = ""
            let target = 150 + round * 37
            while acked.count < target {
                let data = pipe.fileHandleForReading.availableData
                if data.isEmpty { break }
                text += String(decoding: data, as: UTF8.self)
                while let newline = text.firstIndex(of: "\n") {
                    let line = text[..<newline]
                    if line.hasPrefix("ack "), let i = Int(line.dropFirst(4)) { acked.insert(i) }
                    text = String(text[text.index(after: newline)...])
                }
            }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            #expect(acked.count >= target, "writer stopped early: \(process.terminationStatus)")

            let engine = try kind.make(queueDepth: 8)
            defer { engine.shutdown() }
            let log = try await SegmentLog.open(.init(directory: dir, segmentBytes: 1 << 20), engine: engine)
            for i in acked {
                #expect(try await log.get(BlockKey(bytes: Array("block-\(i)".utf8))) == Self.payload(i), "acked block \(i) lost")
            }
            // unacknowledged and cache puts: absent or whole, never wrong
            let highest = (acked.max() ?? 0) + 64
            for i in 0...highest {
                if let got = try await log.get(BlockKey(bytes: Array("block-\(i)".utf8))) {
                    #expect(got == Self.payload(i), "block \(i) came back corrupt")
                }
            }
            await log.close()
        }
    }
}
