import NIOCore

/// A credential for AUTH, and the tenant namespace a connection that presents it works in.
public struct RESPUser: Sendable, Hashable {
    /// `default` is the user of one-argument `AUTH password`.
    public var name: String
    public var password: String
    public var namespace: String

    public init(name: String = "default", password: String, namespace: String) {
        self.name = name
        self.password = password
        self.namespace = namespace
    }
}

/// Per-connection state the handler reads and updates.
public struct RESPSession: Sendable, Hashable {
    public var clientID: Int64
    /// The tenant namespace every key command of this connection works in.
    public var namespace: String
    public var isAuthenticated: Bool
    public var userName: String
    public var clientName: String?
    /// The connection asked for RESP3 (`HELLO 3`): its nulls and maps are written in RESP3 form.
    public var resp3 = false
    /// A MULTI was refused (Strata runs no transactions): every command up to EXEC or DISCARD is
    /// refused too, so that none of the would-be transaction runs.
    public var refusingTransaction = false

    public init(clientID: Int64, namespace: String, isAuthenticated: Bool, userName: String = "default") {
        self.clientID = clientID
        self.namespace = namespace
        self.isAuthenticated = isAuthenticated
        self.userName = userName
    }
}

/// What to send back for one command.
public struct RESPReply: Sendable, Hashable {
    public var value: RESPValue
    /// QUIT: write the reply, then close the connection.
    public var closesConnection: Bool
    /// The reply went out already, through the connection's `writeBulk` (a GET's value written
    /// from where it lies); `value` is not to be sent.
    public var alreadyWritten: Bool
    /// Written in RESP3 form: the session spoke RESP3 when the command was done (`HELLO 3` is
    /// answered in RESP3, `HELLO 2` in RESP2, as Redis does).
    public var resp3: Bool

    public init(_ value: RESPValue, closesConnection: Bool = false, alreadyWritten: Bool = false) {
        self.value = value
        self.closesConnection = closesConnection
        self.alreadyWritten = alreadyWritten
        self.resp3 = false
    }
}

/// Turns one parsed command (its arguments, command name first) into backend calls and a reply,
/// with Redis's reply shapes and error texts. It holds no connection state of its own: the
/// connection's `RESPSession` is passed in and updated, so the same handler serves every
/// connection and tests drive it directly.
public struct RESPCommandHandler: Sendable {
    public let backend: any KVBackend
    /// Empty: no authentication, every connection works in `defaultNamespace`. Otherwise every
    /// command but AUTH and QUIT answers `-NOAUTH` until the connection authenticates.
    public let users: [RESPUser]
    public let defaultNamespace: String
    public let stats: RESPStats
    /// Most keys one SCAN step asks the backend for, whatever COUNT says.
    public let maxScanCount: Int

    public init(
        backend: any KVBackend,
        users: [RESPUser] = [],
        defaultNamespace: String = "default",
        stats: RESPStats = RESPStats(),
        maxScanCount: Int = 10_000
    ) {
        precondition(maxScanCount > 0)
        self.backend = backend
        self.users = users
        self.defaultNamespace = defaultNamespace
        self.stats = stats
        self.maxScanCount = maxScanCount
    }

    /// The session a new connection starts with.
    public func makeSession(clientID: Int64) -> RESPSession {
        RESPSession(clientID: clientID, namespace: defaultNamespace, isAuthenticated: users.isEmpty)
    }

    /// Runs one command. Never throws: every failure is an error reply. `staged`: the value of
    /// `SET key value` (argument 2, an empty placeholder in `arguments`) was received into the
    /// backend's storage (`KVBackend.stageValue`).
    public func handle(
        _ arguments: [ByteBuffer], staged: (any KVStagedValue)? = nil, session: inout RESPSession
    ) async -> RESPReply {
        var reply: RESPReply
        if let refused = transactionRefusal(arguments, &session) {
            reply = refused
        } else {
            reply = await handleUnstamped(arguments, staged: staged, session: &session)
        }
        reply.resp3 = session.resp3
        return reply
    }

    public static let noTransactions = "ERR MULTI is not supported: Strata runs no MULTI/EXEC transactions; send the commands "
        + "without MULTI (redis-py: pipeline(transaction=False))"
    public static let noWatch = "ERR WATCH is not supported: Strata runs no MULTI/EXEC transactions, so there is nothing for a WATCH to guard"
    static let noAuth = "NOAUTH Authentication required."
    private static let transactionCommands: [StaticString] = ["multi", "exec", "discard", "watch", "unwatch"]

    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH: Strata runs no transactions (Redis's promise, no
    /// other client's command in between, needs a store-wide order it does not keep). MULTI is
    /// refused with an error that says so, and so is every command after it up to EXEC or
    /// DISCARD, EXEC answering EXECABORT: none of a would-be transaction runs, as when Redis
    /// discards one. Before AUTH (where a password is required) these commands are answered
    /// NOAUTH, as Redis answers any command it knows. Nil for any other command outside such a
    /// refusal.
    private func transactionRefusal(_ arguments: [ByteBuffer], _ session: inout RESPSession) -> RESPReply? {
        guard let name = arguments.first, session.refusingTransaction || (4...7).contains(name.readableBytes) else { return nil }
        let reply: RESPValue
        if !session.isAuthenticated {
            guard Self.transactionCommands.contains(where: { Self.isNamed(name, $0) }) else { return nil }
            reply = .error(Self.noAuth)
        } else if Self.isNamed(name, "multi") {
            reply = .error(session.refusingTransaction ? "ERR MULTI calls can not be nested" : Self.noTransactions)
            session.refusingTransaction = true
        } else if Self.isNamed(name, "watch") {
            reply = .error(session.refusingTransaction ? "ERR WATCH inside MULTI is not allowed" : Self.noWatch)
        } else if Self.isNamed(name, "exec") {
            reply = session.refusingTransaction
                ? .error("EXECABORT Transaction discarded: Strata runs no MULTI/EXEC transactions") : .error("ERR EXEC without MULTI")
            session.refusingTransaction = false
        } else if Self.isNamed(name, "discard") {
            reply = session.refusingTransaction ? .ok : .error("ERR DISCARD without MULTI")
            session.refusingTransaction = false
        } else if Self.isNamed(name, "unwatch") {
            reply = .ok
        } else if session.refusingTransaction && !Self.isNamed(name, "quit") {
            reply = .error("EXECABORT Command refused: it follows a MULTI, and Strata runs no transactions; send DISCARD")
        } else {
            return nil
        }
        stats.commandProcessed()
        return RESPReply(reply)
    }

    /// The command's name is `lowercase` (letters only), in any case; no String is made.
    private static func isNamed(_ name: ByteBuffer, _ lowercase: StaticString) -> Bool {
        guard name.readableBytes == lowercase.utf8CodeUnitCount else { return false }
        return name.withUnsafeReadableBytes { bytes in
            (0..<bytes.count).allSatisfy { bytes[$0] | 0x20 == lowercase.utf8Start[$0] }
        }
    }

    private func handleUnstamped(
        _ arguments: [ByteBuffer], staged: (any KVStagedValue)?, session: inout RESPSession
    ) async -> RESPReply {
        let name: String
        do { name = try check(arguments, session) } catch { return rejected(error) }
        stats.commandProcessed()
        var arguments = arguments
        var pieces: [ByteBuffer]?
        if let staged {
            // The waiting path takes the value as buffers: SET as the pieces it arrived in, the
            // other commands (only SET stages today) as one.
            if name == "set" {
                guard arguments.count > 2, let taken = staged.pieces() else { return Self.reply(for: StagedValueLost()) }
                pieces = taken
            } else {
                guard arguments.count > 2, let value = staged.materialize() else { return Self.reply(for: StagedValueLost()) }
                arguments[2] = value
            }
            staged.discard()
        }
        do {
            if let pieces { return RESPReply(try await set(arguments, session.namespace, pieces: pieces)) }
            return try await run(name, arguments, &session)
        } catch {
            return Self.reply(for: error)
        }
    }

    /// Runs a batch of commands (a connection's pipelined requests), in order, with a reply for
    /// each, up to the first that closes the connection. Consecutive plain `SET key value`
    /// commands go to the backend together, as an MSET (`KVBackend.set(namespace:pairs:)`): a
    /// durable store then puts them at once and commits them in one transaction, instead of one
    /// commit after another; their replies are what each SET would have answered (OK, or the
    /// error for all of them). No command of the batch runs before the ones ahead of it are done.
    public func handle(
        batch commands: [(arguments: [ByteBuffer], staged: (any KVStagedValue)?)], session: inout RESPSession
    ) async -> [RESPReply] {
        var replies: [RESPReply] = []
        replies.reserveCapacity(commands.count)
        var index = 0
        while index < commands.count {
            var end = index
            while end < commands.count, isPlainSet(commands[end].arguments, session) { end += 1 }
            // A value received into the backend's storage is taken out only for a run of two or more.
            let run = end - index > 1 ? commands[index..<end].compactMap(Self.keyAndValue) : []
            if run.count > 1, run.count == end - index {
                stats.commandsProcessed(run.count)
                var reply: RESPReply
                do {
                    try await backend.set(namespace: session.namespace, piecePairs: run)
                    reply = RESPReply(.ok)
                } catch {
                    reply = Self.reply(for: error)
                }
                reply.resp3 = session.resp3
                replies.append(contentsOf: repeatElement(reply, count: run.count))
                index += run.count
                continue
            }
            let command = commands[index]
            let reply = await handle(command.arguments, staged: command.staged, session: &session)
            replies.append(reply)
            index += 1
            if reply.closesConnection { break }
        }
        return replies
    }

    /// `SET key value` with no option, allowed in this session.
    private func isPlainSet(_ arguments: [ByteBuffer], _ session: RESPSession) -> Bool {
        arguments.count == 3 && session.isAuthenticated && !session.refusingTransaction
            && Self.getOrSet(arguments[0])?.name == "set"
    }

    /// A plain SET's key and value, its value taken from where it was received if it was staged
    /// (nil if that is gone).
    private static func keyAndValue(_ command: (arguments: [ByteBuffer], staged: (any KVStagedValue)?))
        -> (key: ByteBuffer, pieces: [ByteBuffer])?
    {
        guard let staged = command.staged else { return (command.arguments[1], [command.arguments[2]]) }
        return staged.pieces().map { (command.arguments[1], $0) }
    }

    /// A staged value was gone when its command ran (a bug, not a client error).
    private struct StagedValueLost: Error {}

    /// Runs one command without waiting if it can be answered at once: a rejected command, PING,
    /// ECHO, or a GET / SET / EXISTS / MGET (values of `immediateMGetBytes` at most in all) the
    /// backend can serve from RAM. Nil: nothing was done, call `handle`. The connection runs this
    /// on its own thread, so the common command costs no thread hop.
    /// `writeBulk`, where given, sends a GET's value itself as a bulk string, from where the
    /// backend holds it (no copy); the reply then says `alreadyWritten`.
    public func handleImmediately(
        _ arguments: [ByteBuffer], staged: (any KVStagedValue)? = nil, session: inout RESPSession,
        writeBulk: ((UnsafeRawBufferPointer) -> Void)? = nil
    ) -> RESPReply? {
        if let writeBulk {
            return handleImmediately(arguments, staged: staged, session: &session, canWriteBulk: true, writeBulk)
        }
        return handleImmediately(arguments, staged: staged, session: &session, canWriteBulk: false) { _ in }
    }

    /// The same, with `writeBulk` used only where `canWriteBulk`, and not escaping: the
    /// connection's closure, which writes into its reply buffer, then costs no allocation per batch.
    public func handleImmediately(
        _ arguments: [ByteBuffer], staged: (any KVStagedValue)?, session: inout RESPSession,
        canWriteBulk: Bool, _ writeBulk: (UnsafeRawBufferPointer) -> Void
    ) -> RESPReply? {
        var reply = transactionRefusal(arguments, &session)
            ?? handleImmediatelyUnstamped(arguments, staged: staged, session: session, canWriteBulk: canWriteBulk, writeBulk)
        reply?.resp3 = session.resp3
        return reply
    }

    /// (None of these commands changes the session.)
    private func handleImmediatelyUnstamped(
        _ arguments: [ByteBuffer], staged: (any KVStagedValue)?, session: RESPSession,
        canWriteBulk: Bool, _ writeBulk: (UnsafeRawBufferPointer) -> Void
    ) -> RESPReply? {
        let name: String
        do { name = try check(arguments, session) } catch { return rejected(error) }
        let reply: RESPReply
        do {
            switch name {
            case _ where staged != nil && name != "set":
                return nil
            case "ping":
                guard arguments.count <= 2 else { throw RESPCommandError.arity(name) }
                reply = RESPReply(arguments.count == 2 ? .bulkString(arguments[1]) : .simpleString("PONG"))
            case "echo":
                reply = RESPReply(.bulkString(arguments[1]))
            case "get" where canWriteBulk:
                guard case .done(let written) = try backend.withValueImmediately(
                    namespace: session.namespace, key: arguments[1], writeBulk)
                else { return nil }
                reply = RESPReply(.null, alreadyWritten: written)
            case "get":
                guard case .done(let value) = try backend.getImmediately(namespace: session.namespace, key: arguments[1]) else {
                    return nil
                }
                reply = RESPReply(value.map(RESPValue.bulkString) ?? .null)
            case "set":
                let (condition, expiry) = try setOptions(arguments)
                let ns = session.namespace, key = arguments[1]
                let outcome = try staged.map {
                    try backend.setImmediately(namespace: ns, key: key, staged: $0, condition: condition, expiry: expiry)
                } ?? backend.setImmediately(namespace: ns, key: key, value: arguments[2], condition: condition, expiry: expiry)
                guard case .done(let written) = outcome else { return nil }
                reply = RESPReply(written ? .ok : .null)
            case "exists":
                guard case .done(let count) = backend.existsImmediately(namespace: session.namespace, keys: Array(arguments.dropFirst()))
                else { return nil }
                reply = RESPReply(.integer(Int64(count)))
            case "mget":
                guard case .done(let values) = try backend.getImmediately(
                    namespace: session.namespace, keys: Array(arguments.dropFirst()), maxBytes: Self.immediateMGetBytes)
                else { return nil }
                reply = RESPReply(.array(values.map { $0.map(RESPValue.bulkString) ?? .null }))
            default:
                return nil
            }
        } catch {
            reply = Self.reply(for: error)
        }
        stats.commandProcessed()
        return reply
    }

    /// The command's name (lower case) if it exists, has a valid number of arguments and is
    /// allowed in this session; else throws the error reply.
    private func check(_ arguments: [ByteBuffer], _ session: RESPSession) throws(CheckFailed) -> String {
        guard let nameBuffer = arguments.first else { throw CheckFailed(.error("ERR empty command")) }
        let found = Self.getOrSet(nameBuffer)
        let name = found?.name ?? String(buffer: nameBuffer).lowercased()
        guard let spec = found?.spec ?? Self.commands[name] else {
            throw CheckFailed(.error(Self.unknownCommandMessage(arguments)))
        }
        if spec.arity > 0 ? arguments.count != spec.arity : arguments.count < -spec.arity {
            throw CheckFailed(.error("ERR wrong number of arguments for '\(name)' command"))
        }
        if !session.isAuthenticated && !spec.allowedBeforeAuth {
            throw CheckFailed(.error(Self.noAuth))
        }
        return name
    }

    private static let getSpec = commands["get"]!, setSpec = commands["set"]!

    /// An MGET of values larger than this in all is answered on the waiting path, so that copying
    /// them does not hold up the other connections of its event loop.
    public static let immediateMGetBytes = 1 << 20

    /// GET and SET, in any case, recognized from their bytes: the commands nearly every request
    /// is, named without building and lower-casing a String and hashing it.
    static func getOrSet(_ name: ByteBuffer) -> (name: String, spec: CommandSpec)? {
        guard name.readableBytes == 3 else { return nil }
        return name.withUnsafeReadableBytes { bytes -> (name: String, spec: CommandSpec)? in
            guard bytes[1] | 0x20 == UInt8(ascii: "e"), bytes[2] | 0x20 == UInt8(ascii: "t") else { return nil }
            switch bytes[0] | 0x20 {
            case UInt8(ascii: "g"): return ("get", getSpec)
            case UInt8(ascii: "s"): return ("set", setSpec)
            default: return nil
            }
        }
    }

    /// The reply to a command `check` refused, counted.
    private func rejected(_ failed: CheckFailed) -> RESPReply {
        stats.commandProcessed()
        return failed.reply
    }

    private struct CheckFailed: Error {
        var reply: RESPReply
        init(_ value: RESPValue) { reply = RESPReply(value) }
    }

    private static func reply(for error: any Error) -> RESPReply {
        switch error {
        case let error as KVBackendError:
            switch error.code {
            case .outOfSpace: RESPReply(.error("OOM \(error.message)"))
            case .tooLarge, .unavailable: RESPReply(.error("ERR \(error.message)"))
            }
        case let error as RESPCommandError: RESPReply(.error(error.message))
        default: RESPReply(.error("ERR internal error"))
        }
    }

    private func run(_ name: String, _ args: [ByteBuffer], _ session: inout RESPSession) async throws -> RESPReply {
        let ns = session.namespace
        switch name {
        case "ping":
            guard args.count <= 2 else { throw RESPCommandError.arity(name) }
            return RESPReply(args.count == 2 ? .bulkString(args[1]) : .simpleString("PONG"))
        case "echo":
            return RESPReply(.bulkString(args[1]))
        case "quit":
            return RESPReply(.ok, closesConnection: true)
        case "auth":
            return RESPReply(auth(args, &session))
        case "hello":
            return RESPReply(hello(args, &session))
        case "select":
            guard let index = RESPParser.parseInteger(args[1].readableBytesView) else { throw RESPCommandError.notInteger }
            guard index == 0 else { throw RESPCommandError("ERR DB index is out of range") }
            return RESPReply(.ok)
        case "get":
            return RESPReply(try await backend.getPieces(namespace: ns, key: args[1]).map(RESPValue.bulk(pieces:)) ?? .null)
        case "mget":
            let values = try await backend.getPieces(namespace: ns, keys: Array(args.dropFirst()))
            return RESPReply(.array(values.map { $0.map(RESPValue.bulk(pieces:)) ?? .null }))
        case "strlen":
            return RESPReply(.integer(Int64(try await backend.length(namespace: ns, key: args[1]) ?? 0)))
        case "set":
            return RESPReply(try await set(args, ns))
        case "setex", "psetex":
            return RESPReply(try await setex(name, args, ns))
        case "mset":
            guard args.count % 2 == 1 else { throw RESPCommandError.arity(name) }
            let pairs = stride(from: 1, to: args.count, by: 2).map { (key: args[$0], value: args[$0 + 1]) }
            try await backend.set(namespace: ns, pairs: pairs)
            return RESPReply(.ok)
        case "del", "unlink":
            return RESPReply(.integer(Int64(try await backend.delete(namespace: ns, keys: Array(args.dropFirst())))))
        case "exists":
            return RESPReply(.integer(Int64(try await backend.exists(namespace: ns, keys: Array(args.dropFirst())))))
        case "type":
            let found = try await backend.exists(namespace: ns, keys: [args[1]]) > 0
            return RESPReply(.simpleString(found ? "string" : "none"))
        case "ttl", "pttl":
            switch try await backend.timeToLive(namespace: ns, key: args[1]) {
            case .missing: return RESPReply(.integer(-2))
            case .persistent: return RESPReply(.integer(-1))
            case .milliseconds(let ms): return RESPReply(.integer(name == "ttl" ? (ms + 500) / 1000 : ms))
            }
        case "expire", "pexpire":
            return RESPReply(try await expire(name, args, ns))
        case "persist":
            return RESPReply(.integer(try await backend.expire(namespace: ns, key: args[1], at: nil) ? 1 : 0))
        case "dbsize":
            return RESPReply(.integer(Int64(try await backend.keyCount(namespace: ns).keys)))
        case "flushdb":
            if args.count > 2 { throw RESPCommandError.syntax }
            if args.count == 2 {
                let mode = String(buffer: args[1]).lowercased()
                guard mode == "async" || mode == "sync" else { throw RESPCommandError.syntax }
            }
            try await backend.flush(namespace: ns)
            return RESPReply(.ok)
        case "scan":
            return RESPReply(try await scan(args, ns))
        case "info":
            return RESPReply(try await info(args, session))
        case "command":
            return RESPReply(try command(args))
        case "client":
            return RESPReply(try client(args, &session))
        default:
            return RESPReply(.error(Self.unknownCommandMessage(args)))
        }
    }

    private func auth(_ args: [ByteBuffer], _ session: inout RESPSession) -> RESPValue {
        guard args.count <= 3 else { return .error("ERR syntax error") }
        let userName = args.count == 3 ? String(buffer: args[1]) : "default"
        let password = String(buffer: args[args.count - 1])
        if users.isEmpty {
            // Redis with no requirepass: the default user has `nopass`.
            if args.count == 2 {
                return .error(
                    "ERR AUTH <password> called without any password configured for the default user. "
                        + "Are you sure your configuration is correct?")
            }
            return userName == "default" ? .ok : .error(Self.wrongPass)
        }
        guard let user = users.first(where: { $0.name == userName && $0.password == password }) else {
            return .error(Self.wrongPass)
        }
        session.isAuthenticated = true
        session.userName = user.name
        session.namespace = user.namespace
        return .ok
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`. `protover` 2 or 3 switches the
    /// connection's protocol (redis-py 8 asks for 3 by default); anything else is refused with
    /// Redis's NOPROTO and changes nothing. The reply is a map, written in the protocol asked for.
    private func hello(_ args: [ByteBuffer], _ session: inout RESPSession) -> RESPValue {
        var index = 1
        var version: Int64?
        if args.count > 1 {
            guard let asked = RESPParser.parseInteger(args[1].readableBytesView) else {
                return .error("ERR Protocol version is not an integer or out of range")
            }
            guard asked == 2 || asked == 3 else { return .error("NOPROTO sorry, this protocol version is not supported") }
            version = asked
            index = 2
        }
        var updated = session
        while index < args.count {
            switch String(buffer: args[index]).uppercased() {
            case "AUTH" where index + 2 < args.count:
                let reply = auth([args[0], args[index + 1], args[index + 2]], &updated)
                if case .error = reply { return reply }
                index += 3
            case "SETNAME" where index + 1 < args.count:
                let name = String(buffer: args[index + 1])
                updated.clientName = name.isEmpty ? nil : name
                index += 2
            default:
                return .error("ERR Syntax error in HELLO option '\(String(buffer: args[index]))'")
            }
        }
        guard updated.isAuthenticated else {
            return .error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
        }
        if let version { updated.resp3 = version == 3 }
        session = updated
        return .map([
            .bulk("server"), .bulk("redis"), .bulk("version"), .bulk("7.2.0"),
            .bulk("proto"), .integer(session.resp3 ? 3 : 2), .bulk("id"), .integer(session.clientID),
            .bulk("mode"), .bulk("standalone"), .bulk("role"), .bulk("master"), .bulk("modules"), .array([]),
        ])
    }

    static let wrongPass = "WRONGPASS invalid username-password pair or user is disabled."

    /// Redis's text, e.g. `ERR unknown command 'FOO', with args beginning with: 'a' 'b' `.
    static func unknownCommandMessage(_ args: [ByteBuffer]) -> String {
        var listed = ""
        for arg in args.dropFirst() {
            guard listed.utf8.count < 128 else { break }
            listed += "'\(String(String(buffer: arg).prefix(128 - listed.utf8.count)))' "
        }
        return "ERR unknown command '\(String(buffer: args[0]).prefix(128))', with args beginning with: \(listed)"
    }
}

/// An error reply decided while parsing a command's arguments.
struct RESPCommandError: Error {
    var message: String
    init(_ message: String) { self.message = message }

    static let syntax = RESPCommandError("ERR syntax error")
    static let setGetUnsupported = RESPCommandError(
        "ERR SET's GET option is not supported: Strata does not read and replace a value in one step; GET the key, then SET it")
    static let notInteger = RESPCommandError("ERR value is not an integer or out of range")
    static func arity(_ name: String) -> RESPCommandError {
        RESPCommandError("ERR wrong number of arguments for '\(name)' command")
    }
}
