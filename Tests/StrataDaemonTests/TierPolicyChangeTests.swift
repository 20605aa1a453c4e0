import Foundation
import Frontend
@testable import StrataDaemon
import Testing
import TierStore

/// `PUT /admin/tiers` bodies: applied field by field, refused whole with the key and the reason.
@Suite struct TierPolicyChangeTests {
    let current = BlockStore.Policy(hostBudgetBytes: 1 << 30, nvmeBudgetBytes: 8 << 30)

    private func apply(_ json: String) throws -> BlockStore.Policy {
        try TierPolicyChange.apply(Data(json.utf8), to: current, segmentBytes: 256 << 20)
    }

    private func refusal(_ json: String) -> String? {
        do {
            _ = try apply(json)
            return nil
        } catch let error as GatewayError {
            return error.message
        } catch {
            return "\(error)"
        }
    }

    @Test func fieldsApplyAndOthersStay() throws {
        let policy = try apply(#"{"nvme": {"budget": "1GiB", "codec": "lz4"}, "host": {"eviction": "drop"}}"#)
        #expect(policy.nvmeBudgetBytes == 1 << 30)
        #expect(policy.nvmeCodec == .lz4)
        #expect(policy.eviction == .drop)
        #expect(policy.hostBudgetBytes == current.hostBudgetBytes)
    }

    @Test func anNVMeBudgetBelowTwoSegmentsIsRefusedNamingTheSegmentSize() {
        let message = refusal(#"{"nvme": {"budget": "300MiB"}}"#)
        #expect(message?.contains("tiers.nvme.budget") == true)
        #expect(message?.contains("512MiB") == true && message?.contains("256MiB") == true, "\(message ?? "accepted")")
        #expect((try? apply(#"{"nvme": {"budget": "512MiB"}}"#))?.nvmeBudgetBytes == 512 << 20)
    }

    @Test func theWeightsReserveIsAtMostTheBudgetItArrivesWith() throws {
        #expect(try apply(#"{"nvme": {"weights_reserve": "2GiB"}}"#).nvmeWeightsReserveBytes == 2 << 30)
        #expect(try apply(#"{"nvme": {"budget": "1GiB", "weights_reserve": "1GiB"}}"#).nvmeWeightsReserveBytes == 1 << 30)
        let message = refusal(#"{"nvme": {"budget": "1GiB", "weights_reserve": "2GiB"}}"#)
        #expect(message?.contains("tiers.nvme.weights_reserve") == true && message?.contains("at most tiers.nvme.budget (1GiB)") == true,
                "\(message ?? "accepted")")
        #expect(refusal(#"{"nvme": {"weights_reserve": "lots"}}"#)?.contains("tiers.nvme.weights_reserve") == true)
    }

    @Test func badInputNamesTheKey() {
        #expect(refusal(#"{"nvme": {"budget": 0}}"#)?.contains("tiers.nvme.budget") == true)
        #expect(refusal(#"{"host": {"colour": "red"}}"#)?.contains("tiers.host.colour: unknown key") == true)
        // keys of the config a running store cannot change say so, not "unknown"
        for body in [#"{"engine": "psync"}"#, #"{"host": {"weights_budget": "1GiB"}}"#, #"{"nvme": {"segment_size": "64MiB"}}"#] {
            let message = refusal(body)
            #expect(message?.contains("takes effect only when Strata starts") == true, "\(body): \(message ?? "accepted")")
        }
        #expect(refusal(#"{"nvme": {"codec": "zstd"}}"#)?.contains("tiers.nvme.codec") == true)
        #expect(refusal("[1]")?.contains("expected a JSON object") == true)
    }
}
