import Foundation
import NIOCore

extension RESPCommandHandler {
    /// A command's Redis metadata: `arity` as in COMMAND INFO (n: exactly n arguments including
    /// the name, -n: at least n), flags and key positions for COMMAND's reply.
    struct CommandSpec: Sendable {
        var arity: Int
        var flags: [String]
        var firstKey: Int = 0
        var lastKey: Int = 0
        var step: Int = 0
        var allowedBeforeAuth = false
    }

    static let commands: [String: CommandSpec] = [
        "get": CommandSpec(arity: 2, flags: ["readonly", "fast"], firstKey: 1, lastKey: 1, step: 1),
        "set": CommandSpec(arity: -3, flags: ["write", "denyoom"], firstKey: 1, lastKey: 1, step: 1),
        "setex": CommandSpec(arity: 4, flags: ["write", "denyoom"], firstKey: 1, lastKey: 1, step: 1),
        "psetex": CommandSpec(arity: 4, flags: ["write", "denyoom"], firstKey: 1, lastKey: 1, step: 1),
        "mget": CommandSpec(arity: -2, flags: ["readonly", "fast"], firstKey: 1, lastKey: -1, step: 1),
        "mset": CommandSpec(arity: -3, flags: ["write", "denyoom"], firstKey: 1, lastKey: -1, step: 2),
        "del": CommandSpec(arity: -2, flags: ["write"], firstKey: 1, lastKey: -1, step: 1),
        "unlink": CommandSpec(arity: -2, flags: ["write", "fast"], firstKey: 1, lastKey: -1, step: 1),
        "exists": CommandSpec(arity: -2, flags: ["readonly", "fast"], firstKey: 1, lastKey: -1, step: 1),
        "strlen": CommandSpec(arity: 2, flags: ["readonly", "fast"], firstKey: 1, lastKey: 1, step: 1),
        "type": CommandSpec(arity: 2, flags: ["readonly", "fast"], firstKey: 1, lastKey: 1, step: 1),
        "ttl": CommandSpec(arity: 2, flags: ["readonly", "fast"], firstKey: 1, lastKey: 1, step: 1),
        "pttl": CommandSpec(arity: 2, flags: ["readonly", "fast"], firstKey: 1, lastKey: 1, step: 1),
        "expire": CommandSpec(arity: -3, flags: ["write", "fast"], firstKey: 1, lastKey: 1, step: 1),
        "pexpire": CommandSpec(arity: -3, flags: ["write", "fast"], firstKey: 1, lastKey: 1, step: 1),
        "persist": CommandSpec(arity: 2, flags: ["write", "fast"], firstKey: 1, lastKey: 1, step: 1),
        "dbsize": CommandSpec(arity: 1, flags: ["readonly", "fast"]),
        "flushdb": CommandSpec(arity: -1, flags: ["write"]),
        "scan": CommandSpec(arity: -2, flags: ["readonly"]),
        "ping": CommandSpec(arity: -1, flags: ["fast"]),
        "echo": CommandSpec(arity: 2, flags: ["fast"]),
        "auth": CommandSpec(arity: -2, flags: ["noscript", "loading", "stale", "fast", "no_auth"], allowedBeforeAuth: true),
        "hello": CommandSpec(arity: -1, flags: ["noscript", "loading", "stale", "fast", "no_auth"], allowedBeforeAuth: true),
        "select": CommandSpec(arity: 2, flags: ["loading", "stale", "fast"]),
        "quit": CommandSpec(arity: -1, flags: ["fast", "no_auth"], allowedBeforeAuth: true),
        "info": CommandSpec(arity: -1, flags: ["loading", "stale"]),
        "command": CommandSpec(arity: -1, flags: ["loading", "stale"]),
        "client": CommandSpec(arity: -2, flags: ["loading", "stale"]),
    ]

    /// COMMAND's six-field entry (Redis 2.8–6 shape, which redis-py and redis-cli accept).
    static func commandEntry(_ name: String, _ spec: CommandSpec) -> RESPValue {
        .array([
            .bulk(name), .integer(Int64(spec.arity)), .array(spec.flags.map(RESPValue.simpleString)),
            .integer(Int64(spec.firstKey)), .integer(Int64(spec.lastKey)), .integer(Int64(spec.step)),
        ])
    }

    /// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS [name...]` (empty: no docs).
    func command(_ args: [ByteBuffer]) throws -> RESPValue {
        guard args.count > 1 else {
            return .array(Self.commands.sorted { $0.key < $1.key }.map { Self.commandEntry($0.key, $0.value) })
        }
        let sub = String(buffer: args[1]).lowercased()
        switch sub {
        case "count":
            guard args.count == 2 else { throw RESPCommandError.arity("command|count") }
            return .integer(Int64(Self.commands.count))
        case "info":
            return .array(args.dropFirst(2).map { arg in
                let name = String(buffer: arg).lowercased()
                return Self.commands[name].map { Self.commandEntry(name, $0) } ?? .nullArray
            })
        case "docs":
            return .map([])
        default:
            throw RESPCommandError.unknownSubcommand(args[1], of: "COMMAND")
        }
    }

    /// `CLIENT SETNAME | GETNAME | SETINFO | ID`; what client libraries send on connect.
    func client(_ args: [ByteBuffer], _ session: inout RESPSession) throws -> RESPValue {
        let sub = String(buffer: args[1]).lowercased()
        switch sub {
        case "setname":
            guard args.count == 3 else { throw RESPCommandError.arity("client|setname") }
            let name = String(buffer: args[2])
            guard name.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
                throw RESPCommandError("ERR Client names cannot contain spaces, newlines or special characters.")
            }
            session.clientName = name.isEmpty ? nil : name
            return .ok
        case "getname":
            guard args.count == 2 else { throw RESPCommandError.arity("client|getname") }
            return session.clientName.map(RESPValue.bulk) ?? .null
        case "setinfo":
            guard args.count == 4 else { throw RESPCommandError.arity("client|setinfo") }
            let attribute = String(buffer: args[2]).lowercased()
            guard attribute == "lib-name" || attribute == "lib-ver" else {
                throw RESPCommandError("ERR Unrecognized option '\(String(buffer: args[2]))'")
            }
            return .ok
        case "id":
            guard args.count == 2 else { throw RESPCommandError.arity("client|id") }
            return .integer(session.clientID)
        default:
            throw RESPCommandError.unknownSubcommand(args[1], of: "CLIENT")
        }
    }

    /// `INFO [section ...]`: server, clients, memory, stats, keyspace, then the backend's other sections.
    func info(_ args: [ByteBuffer], _ session: RESPSession) async throws -> RESPValue {
        let requested = Set(args.dropFirst().map { String(buffer: $0).lowercased() })
        let everything = requested.isEmpty || !requested.isDisjoint(with: ["all", "everything", "default"])
        var sections: [(String, [(String, String)])] = [
            ("server", [
                ("redis_version", "7.2.0"), ("redis_mode", "standalone"), ("strata_resp", "1"),
                ("arch_bits", "64"), ("process_id", String(ProcessInfo.processInfo.processIdentifier)),
                ("tcp_port", String(stats.tcpPort)),
                ("uptime_in_seconds", String((ContinuousClock.now - stats.started).components.seconds)),
            ]),
            ("clients", [("connected_clients", String(stats.connectedClients))]),
            ("memory", []),
            ("stats", [
                ("total_connections_received", String(stats.totalConnectionsReceived)),
                ("total_commands_processed", String(stats.totalCommandsProcessed)),
                ("total_error_replies", "0"), ("protocol_errors", String(stats.totalProtocolErrors)),
                ("staged_values", String(stats.totalStagedValues)),
                ("staged_bytes_read_directly", String(stats.totalBytesReceivedDirectly)),
                ("replies_sent_directly", String(stats.totalRepliesSentDirectly)),
                ("send_buffer_raises", String(stats.totalSendBufferRaises)),
            ]),
        ]
        for (name, fields) in await backend.info() {
            if let index = sections.firstIndex(where: { $0.0 == name }) {
                sections[index].1 += fields
            } else {
                sections.append((name, fields))
            }
        }
        if let memory = sections.firstIndex(where: { $0.0 == "memory" }) {
            if sections[memory].1.isEmpty { sections[memory].1 = [("used_memory", "0")] }
            // replies waiting for their clients, all connections together (`maxTotalQueuedReplyBytes`)
            sections[memory].1.append(("mem_clients_normal", String(stats.queuedReplyBytes)))
        }
        if everything || requested.contains("keyspace") {
            let count = try await backend.keyCount(namespace: session.namespace)
            let db0 = count.keys > 0 ? [("db0", "keys=\(count.keys),expires=\(count.expiring),avg_ttl=0")] : []
            sections.append(("keyspace", db0))
        }
        var text = ""
        for (name, fields) in sections where everything || requested.contains(name) {
            if !text.isEmpty { text += "\r\n" }
            text += "# \(name.prefix(1).uppercased() + name.dropFirst())\r\n"
            for (key, value) in fields { text += "\(key):\(value)\r\n" }
        }
        return .bulk(text)
    }
}

extension RESPCommandError {
    static func unknownSubcommand(_ sub: ByteBuffer, of command: String) -> RESPCommandError {
        RESPCommandError("ERR unknown subcommand '\(String(buffer: sub).prefix(128))'. Try \(command) HELP.")
    }
}
