// Test support for the crash-recovery tests: writes blocks into a SegmentLog as fast as it can
// and prints `ack <i>` after each durable put returns, until it is killed (SIGKILL).
// Usage: strata-fault-writer DIR ENGINE
import Foundation
import TierStore

let arguments = CommandLine.arguments
guard arguments.count == 3, let kind = IOEngineKind(rawValue: arguments[2]) else {
    FileHandle.standardError.write(Data("usage: strata-fault-writer DIR io_uring|psync\n".utf8))
    exit(2)
}

/// The payload of block i: reproducible by the test.
func payload(_ i: Int) -> [UInt8] {
    var state = UInt64(i) &* 0x9E37_79B9_7F4A_7C15 &+ 1
    return (0..<(3000 + (i % 7) * 5000)).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
}

let engine = try kind.make(queueDepth: 16)
let log = try await SegmentLog.open(.init(directory: arguments[1], segmentBytes: 1 << 20, budgetBytes: 1 << 40), engine: engine)
try await withThrowingTaskGroup(of: Void.self) { group in
    for writer in 0..<4 {
        group.addTask {
            var i = writer
            while true {
                let durable = i % 2 == 0
                try await log.put(BlockKey(bytes: Array("block-\(i)".utf8)), payload(i), durable: durable)
                // unbuffered: an acknowledgement the test reads was really given before the kill
                if durable { FileHandle.standardOutput.write(Data("ack \(i)\n".utf8)) }
                i += 4
            }
        }
    }
    try await group.waitForAll()
}
