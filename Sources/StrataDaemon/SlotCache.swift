import AsyncHTTPClient
import CStrataHash
import Foundation
import Frontend
import Logging
import Metrics
import NIOCore
import Synchronization
import TierStore

/// KV-cache save and restore across the llama-server replicas of one model (`kv_restore`).
///
/// Strata pins every request it sends to a replica to one of its slots (`id_slot`), so it
/// knows what each slot holds. After a request with a long prompt completes, the slot's KV
/// cache is saved (`POST /slots/N?action=save`) and moved into the object store (NVMe), keyed by
/// the prompt's block chain; nothing is saved when a stored prefix already covers most of it.
/// When the router sends a request to a replica that lacks its prefix but the store holds one
/// (`RouteDecision.restoreBlocks`), the file is written into that replica's slot directory and
/// restored into the request's slot (`action=restore`) before the request is sent, so the
/// prefix is loaded, not computed. A restore that fails costs only the time it took: the
/// request goes on and computes its prompt.
///
/// Saved files only fit servers with the same model, KV layout and cache types (llama-server
/// does not check the model): object names carry a fingerprint of the weights and arguments,
/// and all replicas of a model share both. Bounded: at most `maxSaved` prefixes, least
/// recently used dropped first.
final class SlotCache: Sendable {
    struct Saved {
        var object: String
        var chain: [UInt64]
        var lastUsed: UInt64
    }

    struct State {
        var saved: [String: Saved] = [:]
        /// Chain hash at block i of a saved prompt → that prompt's object (the most recent).
        var byBlock: [UInt64: String] = [:]
        /// Per replica: its slots as Strata knows them.
        var replicas: [String: ReplicaSlots] = [:]
        /// Per replica: seconds it takes to compute one prompt block, learned from its answers
        /// (`learnPrefill`). Kept across a restart of the replica (same machine, same model).
        var secondsPerBlock: [String: Double] = [:]
        var clock: UInt64 = 0
    }

    struct ReplicaSlots {
        /// Bumped when the replica's process is replaced: claims of an earlier process release nothing.
        var generation: UInt64 = 0
        /// Slots pinned to a request or being saved.
        var taken: Set<Int> = []
        /// Of `taken`, those being saved: their cache is what `holds` says, and they are free
        /// again within the save (llama-server writes the file in tens of milliseconds).
        var saving: Set<Int> = []
        /// The prompt chain each slot last finished: what its KV cache holds.
        var holds: [Int: [UInt64]] = [:]
        /// Of `taken`, those running a request: its prompt chain (which the slot holds once it
        /// is done) and the blocks of it the slot held when claimed (the rest it computes).
        var running: [Int: (chain: [UInt64], start: Int)] = [:]
        /// When each slot last finished a request (`State.clock`): among slots that serve a
        /// request as well, the one idle longest is taken first.
        var lastFinished: [Int: UInt64] = [:]
        /// Of `running`, those a claim waits for, and which claim (its token): one at a time,
        /// since a running request may go on decoding for long after its prefill, and every
        /// other request for that prefix would wait for it too.
        var awaited: [Int: UInt64] = [:]

        /// Of the running slots no claim waits for yet, the one whose request shares the most
        /// of `chain`.
        func bestRunning(for chain: [UInt64]) -> (slot: Int, shared: Int, start: Int)? {
            running.filter { awaited[$0.key] == nil }
                .map { (slot: $0.key, shared: SlotCache.shared($0.value.chain, chain), start: $0.value.start) }
                .max { $0.shared < $1.shared }
        }
        /// Requests sent without a slot (every slot was taken): llama-server gives each the
        /// slot it chooses, so until they end, what the free slots hold is not known.
        var unpinned = 0
    }

    /// A slot pinned for one request, of one process of the replica.
    struct Claim: Sendable, Equatable {
        var slot: Int
        var generation: UInt64
    }

    let model: String
    /// Of the weights and runtime arguments: files from other settings never restore here.
    let fingerprint: String
    let slotsPerReplica: Int
    /// Prompts shorter than this many blocks are not saved (nor worth restoring).
    let minBlocks: Int
    let maxSaved: Int
    /// `state_dir/slots`: each replica's `--slot-save-path` is a directory in it.
    let directory: String
    let tiers: TierService
    let httpClient: HTTPClient
    let logger: Logger
    private let state = Mutex(State())

    init(model: String, fingerprint: String, slotsPerReplica: Int, minBlocks: Int = 8, maxSaved: Int = 64,
         directory: String, tiers: TierService, httpClient: HTTPClient, logger: Logger) {
        self.model = model
        self.fingerprint = fingerprint
        self.slotsPerReplica = slotsPerReplica
        self.minBlocks = minBlocks
        self.maxSaved = maxSaved
        self.directory = directory
        self.tiers = tiers
        self.httpClient = httpClient
        self.logger = logger
    }

    /// The weights and arguments as a short hex fingerprint.
    static func fingerprint(source: String, weightBytes: UInt64, arguments: [String]) -> String {
        let text = ([source, String(weightBytes)] + arguments).joined(separator: "\u{1F}")
        let hash = text.utf8CString.withUnsafeBufferPointer { strata_xxh3_64($0.baseAddress, $0.count - 1, 0x5107) }
        return String(hash, radix: 16)
    }

    /// Slots a llama-server started with `arguments` has (`-np`/`--parallel`), nil when unset.
    static func parallelSlots(in arguments: [String]) -> Int? {
        var slots: Int?
        for (index, argument) in arguments.enumerated() {
            if argument.hasPrefix("--parallel=") { slots = Int(argument.dropFirst("--parallel=".count)) }
            if ["-np", "--parallel"].contains(argument), index + 1 < arguments.count { slots = Int(arguments[index + 1]) }
        }
        return slots.flatMap { $0 > 0 ? $0 : nil }
    }

    /// Slots Strata gives each replica when the arguments do not say (`--parallel` is then added:
    /// llama-server's automatic choice shares one KV stream between slots, whose saved files
    /// do not restore into servers set up otherwise).
    static let defaultSlots = 2

    /// The `--slot-save-path` of a replica (a Placer name such as `chat#1`).
    func slotDirectory(of replica: String) -> String {
        directory + "/" + replica.replacingOccurrences(of: "#", with: "-")
    }

    /// Leading blocks of `chain` a stored prefix holds (0: none worth restoring).
    func restorable(_ chain: [UInt64]) -> Int {
        state.withLock { state in Self.longestSaved(chain, in: state, minBlocks: minBlocks)?.blocks ?? 0 }
    }

    private static func longestSaved(_ chain: [UInt64], in state: State, minBlocks: Int) -> (object: String, blocks: Int)? {
        guard chain.count >= minBlocks else { return nil }
        for index in stride(from: chain.count - 1, through: minBlocks - 1, by: -1) {
            if let object = state.byBlock[chain[index]], state.saved[object] != nil { return (object, index + 1) }
        }
        return nil
    }

    /// A free slot of `replica` for a request with prompt `chain`, now taken: the one whose
    /// cache shares the longest prefix with it (llama-server keeps a cache per slot); among
    /// those sharing as much, one whose cache the store holds (nothing is lost by overwriting
    /// it), then the one idle longest (its conversation is the least likely to come back),
    /// then the lowest. Nil when every slot is taken (the request then goes unpinned and
    /// llama-server queues it).
    func claimSlot(on replica: String, for chain: [UInt64]) -> Claim? {
        if case .claimed(let claim) = tryClaimSlot(on: replica, for: chain, waiting: false) { return claim }
        return nil
    }

    enum ClaimAttempt: Equatable {
        case claimed(Claim)
        /// No slot is free.
        case noneFree
        /// A slot that is taken now is worth waiting for: ask again soon.
        case worthWaiting
    }

    /// Identifies one waiting claim among the polls it makes (`tryClaimSlot(waiter:)`).
    static func newWaiter() -> UInt64 { UInt64.random(in: 1...UInt64.max) }

    /// As `claimSlot`; with `waiting`, a taken slot that will hold at least `minBlocks` more of
    /// the prompt than the best free slot is worth the wait: one being saved (the next turn of
    /// a conversation arrives while its last answer's slot is being saved: llama-server writes
    /// the file in tens of milliseconds), or one running a request that shares the prefix
    /// (another conversation of the same tenant arrives while the first is computing the
    /// system prompt: waiting for it costs what remains of that request, computing the
    /// prefix again costs all of it, and on the same replica slows both). A running slot is
    /// waited for by one claim at a time: `waiter` (from `newWaiter`) identifies that claim
    /// across its polls; whatever a poll returns other than `.worthWaiting` ends its wait. So
    /// is any slot being saved worth the wait when none is free.
    ///
    /// How long: a claim that has `waited` so long waits on for a running slot while under
    /// `waitFactor` times what computing the blocks it would save takes on this replica
    /// (`learnPrefill`; `patience` until a rate is learned), at most `maxRunningWait`: the
    /// ski-rental rule, which bounds the loss when the running request ends later than that
    /// (the claim then waited and computes as well) to 2.5 times the better choice. For a slot
    /// being saved, `patience` longer than that (the running slot it waited for is saved when
    /// its request ends).
    func tryClaimSlot(on replica: String, for chain: [UInt64], waiting: Bool, waiter: UInt64 = 0,
                      waited: Duration = .zero, patience: Duration = .seconds(2)) -> ClaimAttempt
    {
        state.withLock { state in
            var slots = state.replicas[replica, default: ReplicaSlots()]
            defer { state.replicas[replica] = slots }
            let free = (0..<slotsPerReplica).filter { !slots.taken.contains($0) }
            // The slot sharing the most of the prompt; among equals, one whose cache the store
            // covers (`lost`: false), then the one idle longest, then the lowest.
            let shares = free.map { (slot: $0, shared: Self.shared(slots.holds[$0], chain)) }
            let most = shares.map(\.shared).max()
            let ranked = shares.filter { $0.shared == most }.map { candidate -> (slot: Int, lost: Bool, idleSince: UInt64) in
                let held = slots.holds[candidate.slot] ?? []
                let saved = Self.longestSaved(held, in: state, minBlocks: minBlocks)?.blocks ?? 0
                return (candidate.slot, saved < held.count, slots.lastFinished[candidate.slot] ?? 0)
            }
            let best = ranked.min(by: { a, b in
                if a.lost != b.lost { return !a.lost }
                if a.idleSince != b.idleSince { return a.idleSince < b.idleSince }
                return a.slot < b.slot
            }).map { (slot: $0.slot, shared: most!) }
            // This poll ends the claim's wait for a running slot unless it waits again below.
            for (slot, token) in slots.awaited where token == waiter { slots.awaited[slot] = nil }
            // Not while an unpinned request is in flight: llama-server may have given it the
            // slot meant for the next request, and a save then waits for it to end.
            if waiting, slots.unpinned == 0 {
                let freeShare = best?.shared ?? 0
                let savingShare = slots.saving.map { Self.shared(slots.holds[$0], chain) }.max()
                let rate = state.secondsPerBlock[replica]
                // Nothing free and a slot being saved: it is free again within the save, sooner
                // than an unpinned request would be given one. Up to `patience` beyond the wait
                // for a running slot sharing as much: the claim may have waited that long for
                // this slot while it ran, and its save takes tens of milliseconds.
                if let savingShare, best == nil || savingShare >= freeShare + minBlocks,
                    waited < patience + Self.runningWait(saving: savingShare - freeShare, secondsPerBlock: rate, patience: patience)
                {
                    return .worthWaiting
                }
                if waiter != 0, let running = slots.bestRunning(for: chain), running.shared >= freeShare + minBlocks,
                    waited < Self.runningWait(saving: running.shared - freeShare, secondsPerBlock: rate, patience: patience)
                {
                    slots.awaited[running.slot] = waiter
                    return .worthWaiting
                }
            }
            guard let best else { return .noneFree }
            slots.taken.insert(best.slot)
            slots.running[best.slot] = (chain, best.shared)
            return .claimed(Claim(slot: best.slot, generation: slots.generation))
        }
    }

    /// The longest wait for a running slot, however long computing what it would save takes.
    static let maxRunningWait = Duration.seconds(20)

    /// How long a claim may wait for a running slot whose cache would save it computing
    /// `blocks` blocks: `waitFactor` times as long as computing them takes (`patience` while
    /// that is not known), at most `maxRunningWait`.
    static func runningWait(saving blocks: Int, secondsPerBlock: Double?, patience: Duration) -> Duration {
        guard let secondsPerBlock else { return patience }
        return min(maxRunningWait, .seconds(waitFactor * Double(blocks) * secondsPerBlock))
    }

    /// A request that arrives just as the one it waits for starts computing the shared prefix
    /// waits about as long as computing it would take: at a bound of exactly that, a running
    /// request a little slower than the learned rate (a busier machine) loses the wait at its
    /// very end. Half as much again covers that; waiting costs no machine time, computing the
    /// prefix twice slows every other request on the replica.
    static let waitFactor = 1.5

    /// Prompts computing fewer tokens than this teach nothing of the prefill rate: a fixed cost
    /// per request would dominate.
    static let minLearnedTokens = 64

    /// An answer of `replica` said how long computing its prompt took (`PromptReport`): the
    /// replica's prefill rate, per block of `blocks` (the prompt's chain), is updated from it
    /// (a moving average, so a machine that slows down or speeds up is followed).
    func learnPrefill(on replica: String, report: PromptReport, blocks: Int) {
        let computed = report.tokens - report.cached
        guard let seconds = report.computeSeconds, seconds > 0, blocks > 0, computed >= Self.minLearnedTokens else { return }
        let sample = seconds / Double(computed) * Double(report.tokens) / Double(blocks)
        let rate = state.withLock { state -> Double in
            let rate = state.secondsPerBlock[replica].map { 0.7 * $0 + 0.3 * sample } ?? sample
            state.secondsPerBlock[replica] = rate
            return rate
        }
        Gauge(label: "strata_prefill_seconds_per_block", dimensions: [("model", model), ("replica", replica)]).record(rate)
    }

    /// Seconds per prompt block learned for `replica` (tests; the gauge above exports it).
    func secondsPerBlock(on replica: String) -> Double? {
        state.withLock { $0.secondsPerBlock[replica] }
    }

    /// `tryClaimSlot`, waiting (or until cancelled) while a taken slot is worth the wait. Nil
    /// when every slot is taken and none is worth waiting for (or the wait ran out).
    func claimSlot(on replica: String, for chain: [UInt64], patience: Duration) async -> Claim? {
        await waitingClaim(on: replica, for: chain, patience: patience).claim
    }

    /// `claimSlot`, and whether it waited in vain for a slot running a request with its prefix
    /// (`waitRanOut`): the slot it has (or none: every slot taken) holds less than `minBlocks` of
    /// the prompt, which it would now compute beside the request it waited for. (Not a wait for a
    /// slot being saved, nor one cut short by cancellation.)
    func waitingClaim(on replica: String, for chain: [UInt64], patience: Duration) async -> (claim: Claim?, waitRanOut: Bool) {
        let polled = await pollClaim(on: replica, for: chain, patience: patience)
        guard polled.waitedForRunning, !polled.cancelled else { return (polled.claim, false) }
        let shared = polled.claim.map { sharedBlocks(chain, on: replica, slot: $0.slot) } ?? 0
        return (polled.claim, shared < minBlocks)
    }

    /// The polls of `claimSlot`: the claim; whether it waited for a running slot at some poll;
    /// whether the wait was cancelled.
    private func pollClaim(on replica: String, for chain: [UInt64], patience: Duration) async
        -> (claim: Claim?, waitedForRunning: Bool, cancelled: Bool)
    {
        let started = ContinuousClock.now
        let waiter = Self.newWaiter()
        var waiting = true, waited = false, waitedForRunning = false
        while true {
            let attempt = tryClaimSlot(on: replica, for: chain, waiting: waiting, waiter: waiter,
                                       waited: ContinuousClock.now - started, patience: patience)
            switch attempt {
            case .claimed, .noneFree:
                if waited {
                    // How the waits end: with a slot (the awaited one or another freed
                    // meanwhile) or without (sent unpinned), and how long they took.
                    let outcome = if case .claimed = attempt { "claimed" } else { "unpinned" }
                    Counter(label: "strata_slot_waits_total", dimensions: [("model", model), ("outcome", outcome)]).increment()
                    Metrics.Timer(label: "strata_slot_wait_seconds", dimensions: [("model", model)])
                        .recordSeconds((ContinuousClock.now - started).seconds)
                }
                if case .claimed(let claim) = attempt { return (claim, waitedForRunning, !waiting) }
                return (nil, waitedForRunning, !waiting)
            case .worthWaiting:
                waited = true
                if !waitedForRunning { waitedForRunning = isAwaiting(waiter, on: replica) }
                do { try await Task.sleep(for: .milliseconds(5)) } catch { waiting = false }   // cancelled: stop waiting
            }
        }
    }

    /// Leading blocks of `chain` each of `replicas` holds in a slot a request could be pinned to
    /// now (a free slot, one being saved, or one running a request whose prompt shares at
    /// least `minBlocks` more: a claim waits for those), as far as Strata knows: exact, since
    /// every request is pinned, unlike the router's index, which remembers what was routed to a
    /// replica and not what its few slots still hold. A replica is left out (the router then
    /// goes by its index) while what it holds is not known: an unpinned request is in flight
    /// there, or every slot is running a request none worth waiting for (a new one would go
    /// unpinned). A replica Strata has not sent anything yet holds nothing.
    func heldBlocks(_ chain: [UInt64], on replicas: [String]) -> [String: Int] {
        holdings(chain, on: replicas).held
    }

    /// `heldBlocks`, and where that is a slot running a request (`computing`): the blocks of
    /// `chain` that request is computing now (those its slot did not hold when it started),
    /// which this one would wait for and reuse: work queued on the replica that is not in
    /// this request's way, since it would otherwise do it itself (`PrefixRouter.choose`).
    func holdings(_ chain: [UInt64], on replicas: [String]) -> (held: [String: Int], computing: [String: Int]) {
        state.withLock { state in
            var held: [String: Int] = [:], computing: [String: Int] = [:]
            for replica in replicas {
                guard let slots = state.replicas[replica] else {
                    held[replica] = 0
                    continue
                }
                guard slots.unpinned == 0 else { continue }
                let claimable = (0..<slotsPerReplica).filter { !slots.taken.contains($0) || slots.saving.contains($0) }
                let claimableShare = claimable.map { Self.shared(slots.holds[$0], chain) }.max()
                // (Not one a claim already waits for: the next request would not wait for it.)
                if let running = slots.bestRunning(for: chain), running.shared >= (claimableShare ?? 0) + minBlocks {
                    held[replica] = running.shared
                    computing[replica] = max(0, running.shared - running.start)
                } else if let claimableShare {
                    held[replica] = claimableShare
                }
            }
            return (held, computing)
        }
    }

    /// A request goes to `replica` without a slot (`claimSlot` found none free). Call
    /// `unpinnedFinished` with the returned generation when it ends.
    func unpinnedStarted(on replica: String) -> UInt64 {
        state.withLock { state in
            state.replicas[replica, default: ReplicaSlots()].unpinned += 1
            return state.replicas[replica]!.generation
        }
    }

    /// The unpinned request ended: it was in one of the slots not taken now, which one is not
    /// known, so none of them is counted on to hold anything.
    func unpinnedFinished(on replica: String, generation: UInt64) {
        state.withLock { state in
            guard var slots = state.replicas[replica], slots.generation == generation else { return }
            slots.unpinned -= 1
            for slot in 0..<slotsPerReplica where !slots.taken.contains(slot) { slots.holds[slot] = nil }
            state.replicas[replica] = slots
        }
    }

    /// Blocks at the start of `chain` that `held` shares (chain hashes: equal at i means equal up to i).
    fileprivate static func shared(_ held: [UInt64]?, _ chain: [UInt64]) -> Int {
        guard let held else { return 0 }
        var count = 0
        while count < min(held.count, chain.count), held[count] == chain[count] { count += 1 }
        return count
    }

    /// The replica's process is gone: its slots are empty and free, and claims made on the old
    /// process no longer release anything.
    func replicaRestarted(_ replica: String) {
        state.withLock { state in
            let generation = (state.replicas[replica]?.generation ?? 0) + 1
            state.replicas[replica] = ReplicaSlots(generation: generation)
        }
    }

    /// Leading blocks of `chain` that `slot` of `replica` holds, as far as Strata knows.
    func sharedBlocks(_ chain: [UInt64], on replica: String, slot: Int) -> Int {
        state.withLock { Self.shared($0.replicas[replica]?.holds[slot], chain) }
    }

    /// What `slot` of `replica` holds, as far as Strata knows (tests and `/admin`).
    func held(on replica: String, slot: Int) -> [UInt64]? {
        state.withLock { $0.replicas[replica]?.holds[slot] }
    }

    /// The slots of `replica` pinned to a request or being saved (tests).
    func takenSlots(on replica: String) -> Set<Int> {
        state.withLock { $0.replicas[replica]?.taken ?? [] }
    }

    /// Restores the stored prefix of `chain` into `slot` of the replica at `baseURL`
    /// (`http://127.0.0.1:PORT/v1`). Returns whether llama-server took it.
    func restore(_ chain: [UInt64], replica: String, baseURL: String, slot: Int) async -> Bool {
        let found = state.withLock { state -> (object: String, blocks: Int)? in
            guard let found = Self.longestSaved(chain, in: state, minBlocks: minBlocks) else { return nil }
            state.clock += 1
            state.saved[found.object]?.lastUsed = state.clock
            return found
        }
        guard let found else { return false }
        let started = ContinuousClock.now
        let file = "restore-\(UInt64.random(in: 1...UInt64.max)).bin"
        let path = slotDirectory(of: replica) + "/" + file
        defer { unlink(path) }
        do {
            let objects = try await tiers.objectStore()
            guard let info = objects.info(found.object) else {
                // Removed meanwhile (trimmed by another cache of this model, or by hand): forget it.
                state.withLock { Self.forget(found.object, in: &$0) }
                throw SlotError("the stored prefix \(found.object) is gone")
            }
            let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(info.size), alignment: 4096)
            defer { bytes.deallocate() }
            try await objects.read(found.object, into: bytes)
            guard FileManager.default.createFile(atPath: path, contents: Data(bytesNoCopy: bytes.baseAddress!, count: bytes.count, deallocator: .none))
            else { throw SlotError("cannot write \(path)") }
            try await slotAction("restore", slot: slot, file: file, baseURL: baseURL)
            state.withLock { state in
                // The request pinned there computes only what follows the restored prefix.
                if let running = state.replicas[replica]?.running[slot], running.chain == chain {
                    state.replicas[replica]?.running[slot]?.start = max(running.start, found.blocks)
                }
            }
            let seconds = (ContinuousClock.now - started).seconds
            Counter(label: "strata_kv_restores_total", dimensions: [("model", model), ("result", "ok")]).increment()
            Metrics.Timer(label: "strata_kv_restore_duration_seconds", dimensions: [("model", model)]).recordSeconds(seconds)
            logger.info("restored a stored prefix", metadata: [
                "replica": "\(replica)", "slot": "\(slot)", "blocks": "\(found.blocks)",
                "bytes": "\(ConfigUnits.formatBytes(info.size))", "seconds": "\(String(format: "%.3f", seconds))"])
            return true
        } catch {
            Counter(label: "strata_kv_restores_total", dimensions: [("model", model), ("result", "failed")]).increment()
            logger.warning("restoring a stored prefix failed; the prompt is computed instead", metadata: [
                "replica": "\(replica)", "slot": "\(slot)", "error": "\(error)"])
            return false
        }
    }

    /// The request pinned to `slot` ended. After a completed one whose prompt no stored prefix
    /// mostly covers, the slot is saved into the store (and stays taken until it is).
    func finished(_ chain: [UInt64], replica: String, baseURL: String, claim: Claim, completed: Bool) {
        let save = state.withLock { state -> Bool in
            guard state.replicas[replica]?.generation == claim.generation else { return false }
            // A request that did not complete leaves the slot holding an unknown part of it.
            state.replicas[replica]?.holds[claim.slot] = completed ? chain : nil
            state.replicas[replica]?.running[claim.slot] = nil
            state.replicas[replica]?.awaited[claim.slot] = nil
            state.clock += 1
            state.replicas[replica]?.lastFinished[claim.slot] = state.clock
            let save = completed && chain.count >= minBlocks
                && (Self.longestSaved(chain, in: state, minBlocks: minBlocks)?.blocks ?? 0) * 4 < chain.count * 3
            if save { state.replicas[replica]?.saving.insert(claim.slot) }
            return save
        }
        guard save else {
            release(claim, on: replica)
            return
        }
        Task {
            // The slot is free again once llama-server has written the file (or failed to):
            // moving the file into the store needs the file, not the slot.
            await self.save(chain, replica: replica, baseURL: baseURL, slot: claim.slot) { self.release(claim, on: replica) }
        }
    }

    /// Whether the claim `waiter` waits for a running slot of `replica` (`tryClaimSlot` marked it so).
    private func isAwaiting(_ waiter: UInt64, on replica: String) -> Bool {
        state.withLock { $0.replicas[replica]?.awaited.values.contains(waiter) ?? false }
    }

    /// A claim given back unused (its request went to another replica): the slot holds what it held.
    func giveBack(_ claim: Claim, on replica: String) {
        state.withLock { state in
            guard state.replicas[replica]?.generation == claim.generation else { return }
            state.replicas[replica]?.running[claim.slot] = nil
            state.replicas[replica]?.awaited[claim.slot] = nil
            _ = state.replicas[replica]?.taken.remove(claim.slot)
        }
    }

    private func release(_ claim: Claim, on replica: String) {
        state.withLock { state in
            guard state.replicas[replica]?.generation == claim.generation else { return }
            _ = state.replicas[replica]?.taken.remove(claim.slot)
            _ = state.replicas[replica]?.saving.remove(claim.slot)
        }
    }

    /// Saves the slot, calls `slotDone` (exactly once) as soon as llama-server is done with it,
    /// then moves the file into the store.
    private func save(_ chain: [UInt64], replica: String, baseURL: String, slot: Int, slotDone: () -> Void) async {
        let object = "kv/\(model)/\(fingerprint)/\(String(chain.last!, radix: 16))"
        let file = "save-\(UInt64.random(in: 1...UInt64.max)).bin"
        let path = slotDirectory(of: replica) + "/" + file
        defer { unlink(path) }
        var slotReleased = false
        defer { if !slotReleased { slotDone() } }
        do {
            try await slotAction("save", slot: slot, file: file, baseURL: baseURL)
            slotReleased = true
            slotDone()
            let objects = try await tiers.objectStore()
            // In the log's blocks lane: a saved prefix is cheaper to lose (it is computed again)
            // than the weights in the objects lane, so the log reclaims it first.
            let info = try await objects.importFile(object, path: path, label: Self.label(chain), lane: .blocks)
            for name in remember(object, chain: chain) { try? await objects.remove(name) }
            Counter(label: "strata_kv_saves_total", dimensions: [("model", model), ("result", "ok")]).increment()
            Gauge(label: "strata_kv_saved_prefixes", dimensions: [("model", model)]).record(state.withLock { $0.saved.count })
            logger.debug("saved a prefix", metadata: [
                "replica": "\(replica)", "slot": "\(slot)", "blocks": "\(chain.count)", "bytes": "\(info.size)"])
        } catch {
            Counter(label: "strata_kv_saves_total", dimensions: [("model", model), ("result", "failed")]).increment()
            logger.warning("saving a slot failed", metadata: ["replica": "\(replica)", "slot": "\(slot)", "error": "\(error)"])
        }
    }

    /// Indexes `object`, just stored, as holding `chain` (the most recently used); returns the
    /// objects dropped to stay within `maxSaved`, for the caller to remove.
    func remember(_ object: String, chain: [UInt64]) -> [String] {
        state.withLock { state in
            state.clock += 1
            state.saved[object] = Saved(object: object, chain: chain, lastUsed: state.clock)
            for hash in chain.dropFirst(minBlocks - 1) { state.byBlock[hash] = object }
            return Self.trim(&state, to: maxSaved)
        }
    }

    /// What a saved object records as its source: the prompt chain it holds, so that a later
    /// daemon (restart, reload) can index it again.
    static func label(_ chain: [UInt64]) -> String {
        labelPrefix + chain.map { String($0, radix: 16) }.joined(separator: ",")
    }

    static func chain(fromLabel label: String) -> [UInt64]? {
        guard label.hasPrefix(labelPrefix) else { return nil }
        let hashes = label.dropFirst(labelPrefix.count).split(separator: ",").map { UInt64($0, radix: 16) }
        guard !hashes.isEmpty, !hashes.contains(nil) else { return nil }
        return hashes.map { $0! }
    }

    static let labelPrefix = "llama-slot v1 chain "

    /// Indexes the prefixes an earlier daemon (or replica set) saved for this model with the same
    /// fingerprint, so they are restored as if saved now (least recently used first to go);
    /// removes the model's saved prefixes of other fingerprints (other weights or arguments:
    /// they can never be restored) and any it cannot read. Runs once when the cache is made;
    /// until it is done the router just does not know those prefixes.
    func recover() async {
        let objects: ObjectStore
        do {
            objects = try await tiers.objectStore()
        } catch {
            logger.warning("cannot list saved prefixes", metadata: ["model": "\(model)", "error": "\(error)"])
            return
        }
        // Saved prefixes the log reclaims (to make room) are forgotten at once, so the router does
        // not plan restores of them.
        objects.observeDrops { [weak self] names in
            guard let self else { return }
            let gone = names.filter { $0.hasPrefix("kv/\(self.model)/") }
            guard !gone.isEmpty else { return }
            let count = self.state.withLock { state in
                for name in gone { Self.forget(name, in: &state) }
                return state.saved.count
            }
            Gauge(label: "strata_kv_saved_prefixes", dimensions: [("model", self.model)]).record(count)
        }
        let mine = "kv/\(model)/\(fingerprint)/"
        var stale: [String] = []
        var found: [(String, [UInt64])] = []
        for info in objects.list() where info.name.hasPrefix("kv/\(model)/") {
            if info.name.hasPrefix(mine), let chain = Self.chain(fromLabel: info.source), chain.count >= minBlocks {
                found.append((info.name, chain))
            } else {
                stale.append(info.name)
            }
        }
        let dropped = state.withLock { state -> [String] in
            for (object, chain) in found where state.saved[object] == nil {
                // Older than anything saved by this process: lastUsed 0.
                state.saved[object] = Saved(object: object, chain: chain, lastUsed: 0)
                for hash in chain.dropFirst(minBlocks - 1) where state.byBlock[hash] == nil { state.byBlock[hash] = object }
            }
            return Self.trim(&state, to: maxSaved)
        }
        for name in stale + dropped { try? await objects.remove(name) }
        Gauge(label: "strata_kv_saved_prefixes", dimensions: [("model", model)]).record(state.withLock { $0.saved.count })
        if !found.isEmpty || !stale.isEmpty {
            logger.info("saved prefixes recovered", metadata: [
                "model": "\(model)", "indexed": "\(found.count - dropped.count)", "removed": "\(stale.count + dropped.count)"])
        }
    }

    /// Drops the least recently used saved prefixes past `limit`; returns their objects.
    private static func trim(_ state: inout State, to limit: Int) -> [String] {
        var dropped: [String] = []
        while state.saved.count > limit, let oldest = state.saved.values.min(by: { $0.lastUsed < $1.lastUsed }) {
            forget(oldest.object, in: &state)
            dropped.append(oldest.object)
        }
        return dropped
    }

    /// Takes a saved prefix out of the index (its object is removed, or gone, elsewhere).
    private static func forget(_ object: String, in state: inout State) {
        guard let gone = state.saved.removeValue(forKey: object) else { return }
        for hash in gone.chain where state.byBlock[hash] == object { state.byBlock[hash] = nil }
    }

    /// `POST /slots/SLOT?action=ACTION` with `{"filename": FILE}`; throws unless llama-server answers 200.
    private func slotAction(_ action: String, slot: Int, file: String, baseURL: String) async throws {
        let root = baseURL.hasSuffix("/v1") ? String(baseURL.dropLast(3)) : baseURL
        var request = HTTPClientRequest(url: "\(root)/slots/\(slot)?action=\(action)")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: #"{"filename":"\#(file)"}"#))
        let response = try await httpClient.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok else {
            throw SlotError("\(action) of slot \(slot) answered \(response.status.code): \(String(buffer: body).prefix(300))")
        }
    }

    struct SlotError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }
}
