import NIOCore

extension RESPCommandHandler {
    /// `SET key value [NX|XX] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`; `pieces`: the value, when it
    /// was received in pieces (`args[2]` is then a placeholder).
    func set(_ args: [ByteBuffer], _ ns: String, pieces: [ByteBuffer]? = nil) async throws -> RESPValue {
        let (condition, expiry) = try setOptions(args)
        let written = if let pieces {
            try await backend.set(namespace: ns, key: args[1], pieces: pieces, condition: condition, expiry: expiry)
        } else {
            try await backend.set(namespace: ns, key: args[1], value: args[2], condition: condition, expiry: expiry)
        }
        return written ? .ok : .null
    }

    /// SET's options: when it may write and what it does to the expiry. As in Redis, an option
    /// may be repeated (the last expiry wins), but not combined with another of its kind.
    func setOptions(_ args: [ByteBuffer]) throws -> (KVSetCondition, KVExpiry) {
        var condition = KVSetCondition.always
        var expiry = KVExpiry.never
        var conditionOption: String?, expiryOption: String?
        var i = 3
        while i < args.count {
            let option = String(buffer: args[i]).uppercased()
            switch option {
            case "NX", "XX":
                guard conditionOption == nil || conditionOption == option else { throw RESPCommandError.syntax }
                conditionOption = option
                condition = option == "NX" ? .ifAbsent : .ifPresent
            case "KEEPTTL":
                guard expiryOption == nil || expiryOption == option else { throw RESPCommandError.syntax }
                expiryOption = option
                expiry = .keep
            case "EX", "PX", "EXAT", "PXAT":
                guard expiryOption == nil || expiryOption == option, i + 1 < args.count else { throw RESPCommandError.syntax }
                expiryOption = option
                i += 1
                expiry = .at(try deadline(option, args[i], command: "set"))
            case "GET":
                throw RESPCommandError.setGetUnsupported
            default:
                throw RESPCommandError.syntax
            }
            i += 1
        }
        return (condition, expiry)
    }

    /// `SETEX key seconds value`, `PSETEX key milliseconds value`.
    func setex(_ name: String, _ args: [ByteBuffer], _ ns: String) async throws -> RESPValue {
        let at = try deadline(name == "setex" ? "EX" : "PX", args[2], command: name)
        _ = try await backend.set(namespace: ns, key: args[1], value: args[3], condition: .always, expiry: .at(at))
        return .ok
    }

    /// `EXPIRE key seconds [NX|XX|GT|LT]`, `PEXPIRE key ms [...]`. A time in the past deletes the key.
    /// The options read the TTL first and then set it: two backend calls, not atomic.
    func expire(_ name: String, _ args: [ByteBuffer], _ ns: String) async throws -> RESPValue {
        guard let amount = RESPParser.parseInteger(args[2].readableBytesView) else { throw RESPCommandError.notInteger }
        var options: Set<String> = []
        for arg in args.dropFirst(3) {
            let word = String(buffer: arg).uppercased()
            guard ["NX", "XX", "GT", "LT"].contains(word) else {
                throw RESPCommandError("ERR Unsupported option \(String(buffer: arg))")
            }
            options.insert(word)
        }
        // Redis's rules: NX goes with none of the others, GT not with LT; XX with GT or LT is fine.
        if options.contains("NX") && options.count > 1 {
            throw RESPCommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
        }
        if options.contains("GT") && options.contains("LT") {
            throw RESPCommandError("ERR GT and LT options at the same time are not compatible")
        }
        let (ms, overflow) = amount.multipliedReportingOverflow(by: name == "expire" ? 1000 : 1)
        let (when, overflow2) = backend.now().unixMilliseconds.addingReportingOverflow(ms)
        guard !overflow && !overflow2 else { throw RESPCommandError("ERR invalid expire time in '\(name)' command") }
        if !options.isEmpty {
            let current: Int64?  // remaining ms; nil = no expiry (infinite)
            switch try await backend.timeToLive(namespace: ns, key: args[1]) {
            case .missing: return .integer(0)
            case .persistent: current = nil
            case .milliseconds(let left): current = left
            }
            let ok = options.allSatisfy { option in
                switch option {
                case "NX": current == nil
                case "XX": current != nil
                case "GT": current.map { ms > $0 } ?? false
                default: current.map { ms < $0 } ?? true   // LT: no expiry counts as infinite
                }
            }
            guard ok else { return .integer(0) }
        }
        let done = try await backend.expire(namespace: ns, key: args[1], at: KVTimestamp(unixMilliseconds: when))
        return .integer(done ? 1 : 0)
    }

    /// An absolute deadline from a SET/SETEX expiry option and its argument, with Redis's errors.
    func deadline(_ option: String, _ arg: ByteBuffer, command: String) throws -> KVTimestamp {
        guard let amount = RESPParser.parseInteger(arg.readableBytesView) else { throw RESPCommandError.notInteger }
        let invalid = RESPCommandError("ERR invalid expire time in '\(command)' command")
        guard amount > 0 else { throw invalid }
        let absolute = option.hasSuffix("AT")
        let (ms, overflow) = amount.multipliedReportingOverflow(by: option.hasPrefix("EX") ? 1000 : 1)
        guard !overflow else { throw invalid }
        if absolute { return KVTimestamp(unixMilliseconds: ms) }
        let (when, overflow2) = backend.now().unixMilliseconds.addingReportingOverflow(ms)
        guard !overflow2 else { throw invalid }
        return KVTimestamp(unixMilliseconds: when)
    }

    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]` -> `[cursor, [keys...]]`.
    func scan(_ args: [ByteBuffer], _ ns: String) async throws -> RESPValue {
        guard let cursor = UInt64(String(buffer: args[1])) else { throw RESPCommandError("ERR invalid cursor") }
        var match: ByteBuffer?
        var count = 10
        var onlyStrings = true
        var i = 2
        while i < args.count {
            guard i + 1 < args.count else { throw RESPCommandError.syntax }
            switch String(buffer: args[i]).uppercased() {
            case "MATCH":
                match = args[i + 1]
            case "COUNT":
                guard let n = RESPParser.parseInteger(args[i + 1].readableBytesView) else {
                    throw RESPCommandError.notInteger
                }
                guard n >= 1 else { throw RESPCommandError.syntax }
                count = Int(min(n, Int64(maxScanCount)))
            case "TYPE":
                onlyStrings = String(buffer: args[i + 1]).lowercased() == "string"
            default:
                throw RESPCommandError.syntax
            }
            i += 2
        }
        // Every key is a string; "*" needs no matching.
        if let pattern = match, pattern.readableBytesView.elementsEqual("*".utf8) { match = nil }
        let page = try await backend.scan(namespace: ns, cursor: cursor, match: match, count: count)
        return .array([.bulk(String(page.cursor)), .array(onlyStrings ? page.keys.map(RESPValue.bulkString) : [])])
    }
}
