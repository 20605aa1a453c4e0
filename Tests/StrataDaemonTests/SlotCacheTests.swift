import AsyncHTTPClient
import Foundation
import Frontend
import Logging
@testable import StrataDaemon
import Testing
import TierStore

/// Which llama-server slot a request is pinned to: the decision, without a runtime (nothing is
/// saved or restored here; `minBlocks` is above every chain so `finished` only releases).
@Suite struct SlotCacheTests {
    private func cache(slots: Int, minBlocks: Int = 1_000) -> SlotCache {
        let logger = Logger(label: "slot-test")
        return SlotCache(
            model: "m", fingerprint: "f", slotsPerReplica: slots, minBlocks: minBlocks, directory: "/nonexistent",
            tiers: TierService(configuration: TierConfiguration(), stateDirectory: "/nonexistent", logger: logger),
            httpClient: HTTPClient.shared, logger: logger)
    }

    @Test func aSlotHoldingThePromptsPrefixIsPreferred() {
        let slots = cache(slots: 3)
        let a: [UInt64] = [1, 2, 3, 4], b: [UInt64] = [9, 8, 7]
        let first = slots.claimSlot(on: "r", for: a)!
        let second = slots.claimSlot(on: "r", for: b)!
        #expect(first.slot == 0 && second.slot == 1)
        slots.finished(a, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: first, completed: true)
        slots.finished(b, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: second, completed: true)
        // The next turn of b's conversation goes back to b's slot, not the lowest free one.
        #expect(slots.claimSlot(on: "r", for: b + [6, 5])?.slot == 1)
        #expect(slots.claimSlot(on: "r", for: [1, 2, 99])?.slot == 0)
        // Only slot 2 is free now, holding nothing.
        #expect(slots.claimSlot(on: "r", for: a)?.slot == 2)
        #expect(slots.claimSlot(on: "r", for: a) == nil)
    }

    @Test func amongSlotsSharingAsMuchOneTheStoreCoversThenTheIdlestIsTaken() async throws {
        let slots = cache(slots: 3, minBlocks: 4)
        let replica = try HeldReplica()   // a save fails once it is told to
        let url = "http://127.0.0.1:\(replica.port)/v1"
        let long: [UInt64] = [1, 2, 3, 4, 5, 6], short: [UInt64] = [7, 8, 9], stored: [UInt64] = [20, 21, 22, 23, 24, 25, 26]
        #expect(slots.remember("kv/m/f/stored", chain: stored).isEmpty)
        let claims = [long, short, stored].map { slots.claimSlot(on: "r", for: $0)! }
        #expect(claims.map(\.slot) == [0, 1, 2])
        for (chain, claim) in zip([long, short, stored], claims) {
            slots.finished(chain, replica: "r", baseURL: url, claim: claim, completed: true)
        }
        // `long` is being saved (which fails), `short` is too short to save, `stored` is in the store.
        #expect(slots.takenSlots(on: "r") == [0])
        try await replica.waitForRequest()
        replica.fail()
        // Bounded by a count of sleeps, not by the clock: when the whole suite starves the
        // cooperative pool, a clock deadline can pass before the failing save has run at all.
        for _ in 0..<20_000 where !slots.takenSlots(on: "r").isEmpty { try await Task.sleep(for: .milliseconds(5)) }
        #expect(slots.takenSlots(on: "r").isEmpty)
        // A prompt none of them shares: slot 2's cache is all in the store (nothing lost);
        // of the others, slot 0 has been idle longest.
        #expect(slots.claimSlot(on: "r", for: [99, 98])?.slot == 2)
        #expect(slots.claimSlot(on: "r", for: [97, 98])?.slot == 0)
        #expect(slots.claimSlot(on: "r", for: [96, 98])?.slot == 1)
    }

    @Test func anUnfinishedRequestLeavesItsSlotHoldingNothingKnown() {
        let slots = cache(slots: 2)
        let a: [UInt64] = [1, 2, 3]
        let claim = slots.claimSlot(on: "r", for: a)!
        slots.finished(a, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: claim, completed: false)
        #expect(slots.held(on: "r", slot: claim.slot) == nil)
        // Free again (both slots can be claimed).
        #expect(Set([slots.claimSlot(on: "r", for: a)?.slot, slots.claimSlot(on: "r", for: a)?.slot]) == [0, 1])
    }

    @Test func heldBlocksAreWhatAFreeSlotShares() {
        let slots = cache(slots: 2)
        let a: [UInt64] = [1, 2, 3, 4], b: [UInt64] = [9, 8]
        // Nothing run yet: every replica holds nothing.
        #expect(slots.heldBlocks(a, on: ["r", "s"]) == ["r": 0, "s": 0])
        let first = slots.claimSlot(on: "r", for: a)!
        slots.finished(a, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: first, completed: true)
        #expect(slots.heldBlocks([1, 2, 7], on: ["r", "s"]) == ["r": 2, "s": 0])
        // The slot holding it is taken by another request: a new request gets the other slot.
        let busy = slots.claimSlot(on: "r", for: [1, 2, 3, 4, 5])!
        #expect(busy.slot == first.slot)
        #expect(slots.heldBlocks(a, on: ["r"]) == ["r": 0])
        // Every slot running a request: a new one would go unpinned, so nothing is known and
        // the router goes by its index.
        let other = slots.claimSlot(on: "r", for: b)!
        #expect(slots.heldBlocks(a, on: ["r", "s"]) == ["s": 0])
        slots.finished(b, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: other, completed: true)
        slots.finished([1, 2, 3, 4, 5], replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: busy, completed: true)
        #expect(slots.heldBlocks(a, on: ["r"]) == ["r": 4] && slots.heldBlocks(b, on: ["r"]) == ["r": 2])
    }

    @Test func anUnpinnedRequestMakesTheFreeSlotsUnknown() {
        let slots = cache(slots: 2)
        let a: [UInt64] = [1, 2, 3], b: [UInt64] = [5, 6]
        let first = slots.claimSlot(on: "r", for: a)!
        slots.finished(a, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: first, completed: true)
        let taken = slots.claimSlot(on: "r", for: b)!
        // A request sent without a slot: llama-server puts it where it likes.
        let generation = slots.unpinnedStarted(on: "r")
        #expect(slots.heldBlocks(a, on: ["r"]) == [:])
        slots.finished(b, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: taken, completed: true)
        slots.unpinnedFinished(on: "r", generation: generation)
        // It ended in one of the slots free at that moment (both): neither is counted on.
        #expect(slots.held(on: "r", slot: first.slot) == nil && slots.held(on: "r", slot: taken.slot) == nil)
        #expect(slots.heldBlocks(a, on: ["r"]) == ["r": 0])
        // A pinned request that was running meanwhile still records its slot.
        let again = slots.claimSlot(on: "r", for: b)!
        let generation2 = slots.unpinnedStarted(on: "r")
        slots.unpinnedFinished(on: "r", generation: generation2)
        slots.finished(b, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: again, completed: true)
        #expect(slots.heldBlocks(b, on: ["r"]) == ["r": 2])
        // An unpinned request of a replaced process changes nothing of the new one.
        let old = slots.unpinnedStarted(on: "r")
        slots.replicaRestarted("r")
        slots.unpinnedFinished(on: "r", generation: old)
        let fresh = slots.claimSlot(on: "r", for: b)!
        slots.finished(b, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: fresh, completed: true)
        #expect(slots.heldBlocks(b, on: ["r"]) == ["r": 2])
    }

    @Test func aSlotComputingTheSamePrefixIsWaitedFor() async throws {
        let slots = cache(slots: 2, minBlocks: 2)
        let replica = try HeldReplica()   // saves fail once it is told to
        let url = "http://127.0.0.1:\(replica.port)/v1"
        let system: [UInt64] = [1, 2, 3, 4]
        let first = slots.claimSlot(on: "r", for: system + [10])!
        // Another conversation of the same tenant arrives while the first computes the system
        // prompt: that slot is worth waiting for, and the router is told the replica holds it.
        #expect(slots.heldBlocks(system + [20], on: ["r"]) == ["r": 4])
        // The first request computes all four (its slot held nothing): work queued there that
        // this one would otherwise do itself.
        #expect(slots.holdings(system + [20], on: ["r"]).computing == ["r": 4])
        // Not a prompt sharing less than `minBlocks` more than the free slot: it takes that one.
        guard case .claimed(let other) = slots.tryClaimSlot(on: "r", for: [1, 9], waiting: true, waiter: 1) else {
            Issue.record("a prompt sharing one block waited")
            return
        }
        #expect(other.slot == 1 - first.slot)
        // Every slot running, one sharing the prefix: still known, and still worth the wait...
        #expect(slots.heldBlocks(system + [20], on: ["r"]) == ["r": 4])
        #expect(slots.tryClaimSlot(on: "r", for: system + [20], waiting: true, waiter: 2) == .worthWaiting)
        // ...for one claim at a time: while claim 2 waits, the next one does not (nothing is
        // free, so it goes unpinned), and the router is no longer told the replica holds it.
        #expect(slots.tryClaimSlot(on: "r", for: system + [21], waiting: true, waiter: 3) == .noneFree)
        #expect(slots.heldBlocks(system + [21], on: ["r"]) == [:])
        // A poll that does not wait again ends claim 2's wait.
        #expect(slots.tryClaimSlot(on: "r", for: system + [20], waiting: false, waiter: 2) == .noneFree)
        #expect(slots.heldBlocks(system + [21], on: ["r"]) == ["r": 4])
        slots.finished([1, 9], replica: "r", baseURL: url, claim: other, completed: false)
        // The wait is bounded: after its patience the request takes the free slot, which holds
        // nothing of its prompt: the wait ran out (the replica set then looks elsewhere).
        let (impatient, ranOut) = await slots.waitingClaim(on: "r", for: system + [30], patience: .milliseconds(50))
        #expect(impatient?.slot == other.slot && ranOut)
        // given back unused: free again, holding what it held (nothing known)
        slots.giveBack(impatient!, on: "r")
        #expect(slots.takenSlots(on: "r") == [first.slot] && slots.held(on: "r", slot: other.slot) == nil)
        // A claim that does not wait has not waited in vain, whatever its slot holds.
        let (unwaited, unwaitedRanOut) = await slots.waitingClaim(on: "r", for: [7, 8, 9], patience: .seconds(600))
        #expect(unwaited?.slot == other.slot && !unwaitedRanOut)
        slots.finished([7, 8, 9], replica: "r", baseURL: url, claim: unwaited!, completed: false)
        // A claim waiting for it gets the slot once the first request is done (and its save,
        // which fails here, has given the slot back): its cache holds the system prompt.
        let waiter = Task { await slots.waitingClaim(on: "r", for: system + [20], patience: .seconds(600)) }
        for _ in 0..<50_000 where slots.heldBlocks(system + [20], on: ["r"]) == ["r": 4] {
            try await Task.sleep(for: .milliseconds(2))   // until it waits (the running slot is then not offered)
        }
        #expect(slots.takenSlots(on: "r") == [first.slot], "still waiting, nothing claimed")
        slots.finished(system + [10], replica: "r", baseURL: url, claim: first, completed: true)
        try await replica.waitForRequest()
        replica.fail()
        let waited = await waiter.value
        #expect(waited.claim?.slot == first.slot && !waited.waitRanOut)
    }

    /// The wait for a running slot lasts half as long again as computing what it would save
    /// takes on that replica, learned from llama-server's `timings`; until then, `patience`.
    @Test func theWaitForARunningSlotFollowsTheLearnedPrefillRate() throws {
        let slots = cache(slots: 2, minBlocks: 2)
        // Not learned from: no time given, too few tokens computed, no blocks.
        slots.learnPrefill(on: "r", report: PromptReport(tokens: 800, cached: 0), blocks: 10)
        slots.learnPrefill(on: "r", report: PromptReport(tokens: 800, cached: 750, computeSeconds: 0.5), blocks: 10)
        slots.learnPrefill(on: "r", report: PromptReport(tokens: 800, cached: 0, computeSeconds: 4), blocks: 0)
        #expect(slots.secondsPerBlock(on: "r") == nil)
        // 800 tokens in 10 blocks, 400 computed in 2 s: 5 ms a token, 80 tokens a block.
        slots.learnPrefill(on: "r", report: PromptReport(tokens: 800, cached: 400, computeSeconds: 2), blocks: 10)
        #expect(abs(slots.secondsPerBlock(on: "r")! - 0.4) < 1e-9)
        // A moving average: a slower answer moves it part of the way.
        slots.learnPrefill(on: "r", report: PromptReport(tokens: 800, cached: 0, computeSeconds: 8), blocks: 10)
        #expect(abs(slots.secondsPerBlock(on: "r")! - (0.7 * 0.4 + 0.3 * 0.8)) < 1e-9)
        #expect(slots.secondsPerBlock(on: "s") == nil)

        #expect(SlotCache.runningWait(saving: 10, secondsPerBlock: nil, patience: .seconds(2)) == .seconds(2))
        #expect(SlotCache.runningWait(saving: 10, secondsPerBlock: 0.5, patience: .seconds(2)) == .seconds(7.5))
        #expect(SlotCache.runningWait(saving: 1000, secondsPerBlock: 0.5, patience: .seconds(2)) == SlotCache.maxRunningWait)

        // A running request computes 8 blocks another prompt shares; the free slot holds nothing.
        let system: [UInt64] = [1, 2, 3, 4, 5, 6, 7, 8]
        let running = slots.claimSlot(on: "r", for: system + [10])!
        let rate = slots.secondsPerBlock(on: "r")!   // 0.52 s a block: 4.16 s for 8, a 6.24 s wait
        let bound = SlotCache.waitFactor * 8 * rate
        for (waited, worth) in [(0.0, true), (6.0, true), (bound + 0.01, false)] {
            let attempt = slots.tryClaimSlot(on: "r", for: system + [20], waiting: true, waiter: 7,
                                             waited: .seconds(waited), patience: .seconds(2))
            #expect((attempt == .worthWaiting) == worth, "after \(waited) s")
        }
        // (The last poll gave up and took the free slot.) The running request ends and its slot
        // is being saved: a claim that waited for it while it ran still waits for the save, up
        // to `patience` longer.
        let replica = try HeldReplica()
        slots.finished(system + [10], replica: "r", baseURL: "http://127.0.0.1:\(replica.port)/v1", claim: running, completed: true)
        #expect(slots.takenSlots(on: "r").count == 2)
        #expect(slots.tryClaimSlot(on: "r", for: system + [30], waiting: true, waiter: 9,
                                   waited: .seconds(bound + 1.9), patience: .seconds(2)) == .worthWaiting)
        #expect(slots.tryClaimSlot(on: "r", for: system + [30], waiting: true, waiter: 9,
                                   waited: .seconds(bound + 2.1), patience: .seconds(2)) == .noneFree)
        // On a replica with no rate learned, `patience` bounds it.
        _ = slots.claimSlot(on: "q", for: system + [10])!
        #expect(slots.tryClaimSlot(on: "q", for: system + [20], waiting: true, waiter: 8, waited: .seconds(1.9),
                                   patience: .seconds(2)) == .worthWaiting)
        #expect(slots.tryClaimSlot(on: "q", for: system + [20], waiting: true, waiter: 8, waited: .seconds(2.1),
                                   patience: .seconds(2)) != .worthWaiting)
    }

    @Test func aSlotBeingSavedIsWaitedForWhenItHoldsMoreOfThePrompt() async throws {
        // The "replica" takes the save request and does not answer until told to fail it.
        let replica = try HeldReplica()
        let slots = cache(slots: 2, minBlocks: 2)
        let a: [UInt64] = [1, 2, 3, 4]
        let first = slots.claimSlot(on: "r", for: a)!
        slots.finished(a, replica: "r", baseURL: "http://127.0.0.1:\(replica.port)/v1", claim: first, completed: true)
        // Being saved: its cache is known, and the next turn waits for it rather than compute a.
        #expect(slots.tryClaimSlot(on: "r", for: a + [5], waiting: true, waiter: 1) == .worthWaiting)
        #expect(slots.heldBlocks(a + [5], on: ["r"]) == ["r": 4])
        #expect(slots.claimSlot(on: "r", for: a + [5])?.slot == 1 - first.slot)   // not waiting: the free one
        // Nothing free now, the save still running: a claim waits for it, up to its patience
        // (a wait for a save, not for a slot computing its prefix: not one the replica set moves)...
        let (none, ranOut) = await slots.waitingClaim(on: "r", for: a, patience: .milliseconds(50))
        #expect(none == nil && !ranOut)
        // ...or until it is cancelled (with an hour's patience: a claim that ignored the
        // cancellation would hold the test until its time limit, however loaded the machine).
        let started = ContinuousClock.now
        let cancelled = Task { await slots.claimSlot(on: "r", for: a, patience: .seconds(3600)) }
        cancelled.cancel()
        #expect(await cancelled.value == nil)
        #expect(ContinuousClock.now - started < .seconds(600))
        try await replica.waitForRequest()
        replica.fail()   // the save fails; the slot is free again and still holds a
        let next = await slots.claimSlot(on: "r", for: a + [6], patience: .seconds(600))
        #expect(next?.slot == first.slot)
        #expect(slots.held(on: "r", slot: first.slot) == a)
    }

    @Test func claimsOfAReplacedProcessReleaseNothing() {
        let slots = cache(slots: 1)
        let old = slots.claimSlot(on: "r", for: [1])!
        slots.replicaRestarted("r")
        let new = slots.claimSlot(on: "r", for: [2])!
        #expect(new.slot == old.slot && new.generation != old.generation)
        // The old request ends after the restart: the new claim stays taken.
        slots.finished([1], replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: old, completed: true)
        #expect(slots.claimSlot(on: "r", for: [3]) == nil)
        #expect(slots.held(on: "r", slot: 0) == nil)
        slots.finished([2], replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: new, completed: true)
        #expect(slots.held(on: "r", slot: 0) == [2])
        #expect(slots.claimSlot(on: "r", for: [3])?.slot == 0)
    }
}

@Suite struct KVSendBufferTests {
    @Test func loopbackGets128KiBAndRemoteListenersKeepAutotuning() {
        var kv = KVConfiguration()
        kv.resp = ListenAddress(host: "127.0.0.1", port: 6380)
        #expect(kv.sendBufferBytes == 128 * 1024)
        kv.resp = ListenAddress(host: "0.0.0.0", port: 6380)
        #expect(kv.sendBufferBytes == nil)
        kv.sendBuffer = 64 * 1024
        #expect(kv.sendBufferBytes == 64 * 1024)
        kv.resp = ListenAddress(host: "::1", port: 6380)
        kv.sendBuffer = 0
        #expect(kv.sendBufferBytes == nil)
    }
}

@Suite struct SlotCacheLabelTests {
    @Test func aSavedPrefixsLabelGivesBackItsChain() {
        let chain: [UInt64] = [0, 1, .max, 0xdead_beef]
        #expect(SlotCache.chain(fromLabel: SlotCache.label(chain)) == chain)
        #expect(SlotCache.chain(fromLabel: "/var/lib/file 123 456") == nil)
        #expect(SlotCache.chain(fromLabel: SlotCache.labelPrefix) == nil)
        #expect(SlotCache.chain(fromLabel: SlotCache.labelPrefix + "12,zz") == nil)
    }
}

/// A loopback fake of llama-server's slot endpoint: it takes each request whole and holds it
/// unanswered until `fail()`, which answers it, and any later one at once, with a 500. The
/// save then fails promptly and cleanly: no reset or refused connection, which the HTTP client
/// would retry until its 30 s timeout.
final class HeldReplica: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let condition = NSCondition()
    private var failing = false
    private var received = 0

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard fd >= 0, bound == 0, listen(fd, 16) == 0 else { throw POSIXError(.EADDRINUSE) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread { [self] in
            while true {
                let connection = accept(fd, nil, nil)
                if connection < 0 { return }   // the listener was shut down
                Thread { self.serve(connection) }.start()
            }
        }.start()
    }

    private func serve(_ connection: Int32) {
        defer { _ = Foundation.close(connection) }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !Self.isWhole(request) {
            let count = read(connection, &buffer, buffer.count)
            if count <= 0 { return }
            request += buffer[..<count]
        }
        condition.lock()
        received += 1
        while !failing { condition.wait() }
        condition.unlock()
        let answer = Array("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\nheld".utf8)
        _ = answer.withUnsafeBytes { write(connection, $0.baseAddress, $0.count) }
        shutdown(connection, Int32(SHUT_WR))
        while read(connection, &buffer, buffer.count) > 0 {}   // until the client closes
    }

    /// A request head and as much body as its `Content-Length` says.
    private static func isWhole(_ request: [UInt8]) -> Bool {
        let text = String(decoding: request, as: UTF8.self)
        guard let end = text.range(of: "\r\n\r\n") else { return false }
        let head = text[..<end.lowerBound].lowercased()
        let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
            .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
        return text.utf8.count - text[..<end.upperBound].utf8.count >= length
    }

    /// Waits until a request has come (polls, at most 50,000 times 2 ms apart: a bound by count
    /// does not run out while the sending task has not yet been scheduled on a starved machine).
    func waitForRequest() async throws {
        for _ in 0..<50_000 {
            if requests > 0 { return }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw POSIXError(.ETIMEDOUT)
    }

    private var requests: Int {
        condition.lock()
        defer { condition.unlock() }
        return received
    }

    /// Answers every held request, and every later one at once, with a 500.
    func fail() {
        condition.lock()
        failing = true
        condition.broadcast()
        condition.unlock()
    }

    deinit {
        fail()
        shutdown(listener, Int32(SHUT_RDWR))   // ends the accepting thread
        _ = Foundation.close(listener)
    }
}

/// What a saved slot is restored into: the same weights, arguments and llama-server build.
@Suite struct SlotCacheFingerprintTests {
    @Test func aNewLlamaServerBuildChangesTheFingerprint() throws {
        let binary = FileManager.default.temporaryDirectory.appendingPathComponent("fake-llama-server-\(getpid())").path
        defer { unlink(binary) }
        func fingerprint() throws -> String? {
            let config = try ConfigLoader.parse(yaml: """
                runtimes: { llama: { kind: llama-server, binary: \(binary), args: ["--parallel", "2"] } }
                models: [{ name: m, source: \(ConfigLoaderTests.modelFile), runtime: llama, replicas: 2, kv_restore: true }]
                """, environment: ConfigLoaderTests.env)
            let logger = Logger(label: "fingerprint-test")
            return ModelController.slotCache(
                for: config.models[0], config: config,
                tiers: TierService(configuration: TierConfiguration(), stateDirectory: "/nonexistent", logger: logger),
                httpClient: HTTPClient.shared, logger: logger)?.fingerprint
        }
        FileManager.default.createFile(atPath: binary, contents: Data(count: 100))
        let first = try #require(try fingerprint())
        #expect(try fingerprint() == first, "the same build: the same fingerprint")
        FileManager.default.createFile(atPath: binary, contents: Data(count: 200))   // rebuilt
        #expect(try fingerprint() != first, "prefixes saved by another build are not restored into this one")
    }
}
