#if canImport(RESP)
import RESP
#else
import Frontend
#endif
import NIOCore
import Testing

/// Runs commands against a handler over FakeKVBackend, keeping one connection's session.
private struct Harness {
    let backend: FakeKVBackend
    let handler: RESPCommandHandler
    var session: RESPSession

    init(users: [RESPUser] = []) {
        backend = FakeKVBackend()
        handler = RESPCommandHandler(backend: backend, users: users, defaultNamespace: "tenant-a")
        session = handler.makeSession(clientID: 7)
    }

    mutating func run(_ words: String...) async -> RESPValue {
        await reply(words).value
    }

    mutating func reply(_ words: [String]) async -> RESPReply {
        await handler.handle(words.map { ByteBuffer(string: $0) }, session: &session)
    }
}

private func bulks(_ words: String...) -> RESPValue { .array(words.map { .bulk($0) }) }

extension RESPValue {
    fileprivate var isNoAuth: Bool {
        if case .error(let text) = self { return text.hasPrefix("NOAUTH ") }
        return false
    }
}

@Suite struct RESPCommandHandlerTests {
    /// (command, expected reply) run in order on one connection.
    static let script: [([String], RESPValue)] = [
        (["PING"], .simpleString("PONG")),
        (["ping", "hi"], .bulk("hi")),
        (["PING", "a", "b"], .error("ERR wrong number of arguments for 'ping' command")),
        (["ECHO", "x y"], .bulk("x y")),
        (["ECHO"], .error("ERR wrong number of arguments for 'echo' command")),
        (["GET", "k"], .null),
        (["GET"], .error("ERR wrong number of arguments for 'get' command")),
        (["GET", "a", "b"], .error("ERR wrong number of arguments for 'get' command")),
        (["SET", "k", "v"], .ok),
        (["GET", "k"], .bulk("v")),
        (["SET", "k", "w", "NX"], .null),
        (["SET", "k2", "w", "XX"], .null),
        (["SET", "k2", "w", "nx"], .ok),
        (["SET", "k2", "z", "XX"], .ok),
        (["GET", "k2"], .bulk("z")),
        (["SET", "k", "v", "NX", "XX"], .error("ERR syntax error")),
        (["SET", "k", "v", "EX"], .error("ERR syntax error")),
        (["SET", "k", "v", "EX", "1", "PX", "5"], .error("ERR syntax error")),
        (["SET", "k", "v", "KEEPTTL", "EX", "5"], .error("ERR syntax error")),
        (["SET", "k", "w", "NX", "NX"], .null),   // repeated options are allowed, as in Redis
        (["SET", "k", "v", "XX", "xx", "KEEPTTL", "KEEPTTL"], .ok),
        (["SET", "k", "v", "GET"], .error("ERR SET's GET option is not supported: Strata does not read and replace a value in one step; GET the key, then SET it")),
        (["SET", "k", "v", "BOGUS"], .error("ERR syntax error")),
        (["SET", "k", "v", "EX", "ten"], .error("ERR value is not an integer or out of range")),
        (["SET", "k", "v", "EX", "0"], .error("ERR invalid expire time in 'set' command")),
        (["SET", "k", "v", "PX", "-5"], .error("ERR invalid expire time in 'set' command")),
        (["SET", "k", "v", "EX", "9223372036854775807"], .error("ERR invalid expire time in 'set' command")),
        (["SET", "k"], .error("ERR wrong number of arguments for 'set' command")),
        (["MSET", "a", "1", "b", "2"], .ok),
        (["MSET", "a", "1", "b"], .error("ERR wrong number of arguments for 'mset' command")),
        (["MGET", "a", "nope", "b", "a"], .array([.bulk("1"), .null, .bulk("2"), .bulk("1")])),
        (["EXISTS", "a", "a", "nope", "b"], .integer(3)),
        (["STRLEN", "a"], .integer(1)),
        (["STRLEN", "nope"], .integer(0)),
        (["STRLEN", "a", "b"], .error("ERR wrong number of arguments for 'strlen' command")),
        (["DBSIZE"], .integer(4)),
        (["DEL", "a", "a", "nope"], .integer(1)),
        (["EXISTS", "a"], .integer(0)),
        (["TYPE", "b"], .simpleString("string")),
        (["TYPE", "a"], .simpleString("none")),
        (["TTL", "b"], .integer(-1)),
        (["TTL", "a"], .integer(-2)),
        (["PTTL", "a"], .integer(-2)),
        (["EXPIRE", "a", "10"], .integer(0)),
        (["EXPIRE", "b", "x"], .error("ERR value is not an integer or out of range")),
        (["EXPIRE", "b", "10", "XX"], .integer(0)),
        (["EXPIRE", "b", "10", "NX"], .integer(1)),
        (["TTL", "b"], .integer(10)),
        (["PTTL", "b"], .integer(10_000)),
        (["EXPIRE", "b", "5", "GT"], .integer(0)),
        (["EXPIRE", "b", "20", "GT"], .integer(1)),
        (["EXPIRE", "b", "20", "NX", "XX"], .error("ERR NX and XX, GT or LT options at the same time are not compatible")),
        (["EXPIRE", "b", "20", "LT", "gt"], .error("ERR GT and LT options at the same time are not compatible")),
        (["EXPIRE", "b", "20", "NX", "NX"], .integer(0)),   // has an expiry
        (["EXPIRE", "b", "30", "XX", "GT"], .integer(1)),   // XX goes with GT or LT
        (["EXPIRE", "b", "40", "XX", "LT"], .integer(0)),
        (["EXPIRE", "b", "25", "lt", "XX", "LT"], .integer(1)),
        (["TTL", "b"], .integer(25)),
        (["EXPIRE", "b", "20", "SOON"], .error("ERR Unsupported option SOON")),
        (["PERSIST", "b"], .integer(1)),
        (["PERSIST", "b"], .integer(0)),
        (["EXPIRE", "b", "-1"], .integer(1)),
        (["EXISTS", "b"], .integer(0)),
        (["SELECT", "0"], .ok),
        (["SELECT", "1"], .error("ERR DB index is out of range")),
        (["SELECT", "x"], .error("ERR value is not an integer or out of range")),
        (["FLUSHDB", "NOW"], .error("ERR syntax error")),
        (["FOO"], .error("ERR unknown command 'FOO', with args beginning with: ")),
        (["foo", "a", "b c"], .error("ERR unknown command 'foo', with args beginning with: 'a' 'b c' ")),
        (["HELLO", "4"], .error("NOPROTO sorry, this protocol version is not supported")),
        (["HELLO", "two"], .error("ERR Protocol version is not an integer or out of range")),
        (["HELLO", "2", "SETNAME", "w"], .map([
            .bulk("server"), .bulk("redis"), .bulk("version"), .bulk("7.2.0"), .bulk("proto"), .integer(2),
            .bulk("id"), .integer(7), .bulk("mode"), .bulk("standalone"), .bulk("role"), .bulk("master"),
            .bulk("modules"), .array([]),
        ])),
        (["HELLO", "2", "LOUDLY"], .error("ERR Syntax error in HELLO option 'LOUDLY'")),
        (["CLIENT", "SETINFO", "LIB-NAME", "redis-py"], .ok),
        (["CLIENT", "SETINFO", "lib-ver", "5.0.0"], .ok),
        (["CLIENT", "SETINFO", "color", "red"], .error("ERR Unrecognized option 'color'")),
        (["CLIENT", "GETNAME"], .bulk("w")),
        (["CLIENT", "SETNAME", "worker-1"], .ok),
        (["CLIENT", "GETNAME"], .bulk("worker-1")),
        (["CLIENT", "SETNAME", "has space"], .error("ERR Client names cannot contain spaces, newlines or special characters.")),
        (["CLIENT", "ID"], .integer(7)),
        (["CLIENT", "KILL"], .error("ERR unknown subcommand 'KILL'. Try CLIENT HELP.")),
        (["CLIENT"], .error("ERR wrong number of arguments for 'client' command")),
        (["COMMAND", "COUNT"], .integer(28)),
        (["COMMAND", "DOCS"], .map([])),
        (["COMMAND", "INFO", "get", "nope"], .array([
            .array([.bulk("get"), .integer(2), .array([.simpleString("readonly"), .simpleString("fast")]), .integer(1), .integer(1), .integer(1)]),
            .nullArray,
        ])),
        (["AUTH", "secret"], .error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")),
        (["AUTH", "default", "anything"], .ok),
        (["AUTH", "bob", "x"], .error("WRONGPASS invalid username-password pair or user is disabled.")),
        (["SCAN", "x"], .error("ERR invalid cursor")),
        (["SCAN", "0", "COUNT", "0"], .error("ERR syntax error")),
        (["SCAN", "0", "COUNT", "z"], .error("ERR value is not an integer or out of range")),
        (["SCAN", "0", "MATCH"], .error("ERR syntax error")),
        (["SCAN", "0", "TYPE", "hash"], .array([.bulk("0"), .array([])])),
        (["SCAN", "0", "MATCH", "k*"], .array([.bulk("0"), bulks("k", "k2")])),
        (["FLUSHDB"], .ok),
        (["DBSIZE"], .integer(0)),
        (["GET", "k"], .null),
    ]

    @Test func commandScript() async {
        var harness = Harness()
        for (words, expected) in Self.script {
            let reply = await harness.reply(words).value
            #expect(reply == expected, "\(words)")
        }
    }

    /// The same script with every command offered to the non-waiting path first (as the
    /// connection does): the same replies, and the commands it declines fall through unchanged.
    @Test func commandScriptImmediateFirst() async {
        var harness = Harness()
        var immediate = 0
        for (words, expected) in Self.script {
            let arguments = words.map { ByteBuffer(string: $0) }
            let reply: RESPValue
            if let answered = harness.handler.handleImmediately(arguments, session: &harness.session) {
                immediate += 1
                reply = answered.value
            } else {
                reply = await harness.reply(words).value
            }
            #expect(reply == expected, "\(words)")
        }
        #expect(immediate > 20)
        #expect(harness.handler.stats.totalCommandsProcessed == Self.script.count)
    }

    /// The same again with a connection that writes GET values itself (`writeBulk`): a value
    /// found goes out through it, byte for byte, and the reply says so; a miss is still `$-1`
    /// through the ordinary reply, and no other command uses it.
    @Test func aGetValueGoesOutThroughTheConnectionsOwnWriterWhenItHasOne() async {
        var harness = Harness()
        var direct = 0
        for (words, expected) in Self.script {
            let arguments = words.map { ByteBuffer(string: $0) }
            var sent: [[UInt8]] = []
            let reply: RESPValue
            if let answered = harness.handler.handleImmediately(arguments, session: &harness.session, writeBulk: {
                sent.append(Array($0))
            }) {
                if answered.alreadyWritten {
                    direct += 1
                    #expect(sent.count == 1, "\(words)")
                    reply = .bulkString(ByteBuffer(bytes: sent.first ?? []))
                } else {
                    #expect(sent.isEmpty, "\(words)")
                    reply = answered.value
                }
            } else {
                #expect(sent.isEmpty, "\(words)")
                reply = await harness.reply(words).value
            }
            #expect(reply == expected, "\(words)")
        }
        // (the fake answers keys named slow:… only on the waiting path)
        let hits = Self.script.filter { $0.0.count == 2 && $0.0[0].lowercased() == "get" && !$0.0[1].hasPrefix("slow:") && $0.1 != .null }.count
        #expect(hits >= 2 && direct == hits)
    }

    /// A connection's pipelined batch: consecutive plain `SET key value` commands reach the
    /// backend as one MSET-like call (which a durable store commits at once); every other
    /// command, a SET with options, and a lone SET run alone, in order; replies stay one per
    /// command and stop at QUIT.
    @Test func aPipelinedRunOfPlainSetsGoesToTheBackendTogether() async {
        let backend = FakeKVBackend()
        let handler = RESPCommandHandler(backend: backend, defaultNamespace: "tenant-a")
        var session = handler.makeSession(clientID: 1)
        let words: [[String]] = [
            ["SET", "a", "1"], ["set", "b", "2"], ["SET", "a", "3"], ["GET", "a"], ["SET", "c", "4", "EX", "10"],
            ["SET", "d", "5"], ["SET", "e", "6"], ["PING"], ["SET", "f", "7"], ["QUIT"], ["SET", "g", "8"],
        ]
        let replies = await handler.handle(batch: words.map { ($0.map { ByteBuffer(string: $0) }, nil) }, session: &session)
        #expect(replies.map(\.value) == [.ok, .ok, .ok, .bulk("3"), .ok, .ok, .ok, .simpleString("PONG"), .ok, .ok])
        #expect(replies.last?.closesConnection == true)
        #expect(backend.pairSets == [3, 2], "a, b, a together; then d, e")
        #expect(handler.stats.totalCommandsProcessed == 10)
        var check = handler.makeSession(clientID: 2)
        #expect(await handler.handle([ByteBuffer(string: "GET"), ByteBuffer(string: "g")], session: &check).value == .null,
                "nothing after QUIT ran")
        #expect(await handler.handle([ByteBuffer(string: "GET"), ByteBuffer(string: "e")], session: &check).value == .bulk("6"))
    }

    /// A run that the backend refuses answers each of its SETs with the error and writes none of
    /// them; the commands after it still run. Before AUTH, SETs are not run together: each is
    /// refused on its own.
    @Test func aRefusedRunFailsEachOfItsSetsAndNothingIsWritten() async {
        let backend = FakeKVBackend()
        let handler = RESPCommandHandler(backend: backend, defaultNamespace: "tenant-a")
        var session = handler.makeSession(clientID: 1)
        let batch: [[String]] = [["SET", "x", "1"], ["SET", "full:y", "2"], ["SET", "z", "3"], ["GET", "x"]]
        let replies = await handler.handle(batch: batch.map { ($0.map { ByteBuffer(string: $0) }, nil) }, session: &session)
        let refused = RESPValue.error("OOM no room for 3 values")
        #expect(replies.map(\.value) == [refused, refused, refused, .null])

        let guarded = RESPCommandHandler(backend: backend, users: [RESPUser(password: "pw", namespace: "n")])
        var stranger = guarded.makeSession(clientID: 3)
        let noAuth = await guarded.handle(batch: [["SET", "p", "1"], ["SET", "q", "2"]].map { ($0.map { ByteBuffer(string: $0) }, nil) },
                                          session: &stranger)
        #expect(noAuth.map(\.value) == [.error("NOAUTH Authentication required."), .error("NOAUTH Authentication required.")])
        #expect(backend.pairSets == [3])
    }

    @Test func quitRepliesOkAndCloses() async {
        var harness = Harness()
        let reply = await harness.reply(["QUIT"])
        #expect(reply == RESPReply(.ok, closesConnection: true))
        #expect(await harness.reply(["PING"]).closesConnection == false)
    }

    @Test func expiryFollowsTheBackendClock() async {
        var harness = Harness()
        #expect(await harness.run("SET", "e", "v", "EX", "10") == .ok)
        #expect(await harness.run("TTL", "e") == .integer(10))
        harness.backend.advance(milliseconds: 4_400)
        #expect(await harness.run("TTL", "e") == .integer(6))  // 5600 ms rounds to 6, as Redis
        #expect(await harness.run("PTTL", "e") == .integer(5_600))
        #expect(await harness.run("SET", "e", "w", "KEEPTTL") == .ok)
        #expect(await harness.run("PTTL", "e") == .integer(5_600))
        #expect(await harness.run("SET", "p", "v", "PX", "1500") == .ok)
        #expect(await harness.run("DBSIZE") == .integer(2))
        harness.backend.advance(milliseconds: 1_500)
        #expect(await harness.run("GET", "p") == .null)
        #expect(await harness.run("EXISTS", "p") == .integer(0))
        #expect(await harness.run("SET", "p", "again", "NX") == .ok)  // expired counts as absent
        #expect(await harness.run("SET", "e", "plain") == .ok)  // plain SET clears the TTL
        #expect(await harness.run("TTL", "e") == .integer(-1))
        let now = harness.backend.now().unixMilliseconds
        #expect(await harness.run("SET", "at", "v", "PXAT", String(now + 2_000)) == .ok)
        #expect(await harness.run("PTTL", "at") == .integer(2_000))
        #expect(await harness.run("SETEX", "sx", "3", "v") == .ok)
        #expect(await harness.run("TTL", "sx") == .integer(3))
        #expect(await harness.run("PEXPIRE", "sx", "250") == .integer(1))
        harness.backend.advance(milliseconds: 250)
        #expect(await harness.run("GET", "sx") == .null)
        #expect(await harness.run("SET", "past", "v", "PXAT", "1") == .ok)
        #expect(await harness.run("GET", "past") == .null)
    }

    @Test(arguments: [1, 3, 10, 1000])
    func scanReturnsEveryKeyExactlyOnce(count: Int) async throws {
        var harness = Harness()
        var expected: Set<String> = []
        for i in 0..<137 {
            #expect(await harness.run("SET", "key:\(i)", "v") == .ok)
            if String(i).hasPrefix("1") { expected.insert("key:\(i)") }
            #expect(await harness.run("SET", "other:\(i)", "v") == .ok)
        }
        var seen: [String] = []
        var cursor = "0"
        var steps = 0
        repeat {
            let reply = await harness.run("SCAN", cursor, "MATCH", "key:1*", "COUNT", String(count))
            guard case .array(let parts) = reply, parts.count == 2, case .bulkString(let next) = parts[0],
                case .array(let keys) = parts[1]
            else {
                Issue.record("bad SCAN reply \(reply)")
                return
            }
            for case .bulkString(let key) in keys { seen.append(String(buffer: key)) }
            cursor = String(buffer: next)
            steps += 1
        } while cursor != "0" && steps < 10_000
        #expect(seen.count == expected.count)
        #expect(Set(seen) == expected)
    }

    /// An MGET is answered on the connection's thread when the backend has every value at once and
    /// they are small; else it waits, having changed nothing.
    @Test func mgetIsAnsweredAtOnceOnlyWhenSmallAndAtHand() async {
        var harness = Harness()
        let limit = RESPCommandHandler.immediateMGetBytes
        let big = String(repeating: "x", count: limit - 1)
        #expect(await harness.run("SET", "a", "1") == .ok && harness.backend.immediateAnswers == 0)
        #expect(await harness.run("SET", "big", big) == .ok)
        func immediate(_ words: String...) -> RESPValue? {
            harness.handler.handleImmediately(words.map { ByteBuffer(string: $0) }, session: &harness.session)?.value
        }
        #expect(immediate("MGET", "a", "nope", "a") == .array([.bulk("1"), .null, .bulk("1")]))
        #expect(immediate("MGET", "big", "a") == .array([.bulk(big), .bulk("1")]))   // the limit, exactly
        #expect(harness.backend.immediateAnswers == 2)
        #expect(immediate("MGET", "big", "a", "a") == nil)   // one byte over: waits
        #expect(immediate("MGET", "a", "slow:x") == nil)     // a key the backend cannot answer at once
        #expect(immediate("MGET") == .error("ERR wrong number of arguments for 'mget' command"))
        #expect(await harness.run("MGET", "big", "a", "a") == .array([.bulk(big), .bulk("1"), .bulk("1")]))
    }

    /// Strata runs no MULTI/EXEC transactions: MULTI is refused with an error that says so, and
    /// nothing up to EXEC or DISCARD runs (a client's transaction fails whole, never half done).
    @Test func multiIsRefusedAndNothingOfTheTransactionRuns() async {
        var harness = Harness()
        let refused = RESPValue.error("EXECABORT Command refused: it follows a MULTI, and Strata runs no transactions; send DISCARD")
        #expect(await harness.run("EXEC") == .error("ERR EXEC without MULTI"))
        #expect(await harness.run("DISCARD") == .error("ERR DISCARD without MULTI"))
        #expect(await harness.run("multi") == .error(RESPCommandHandler.noTransactions))
        #expect(await harness.run("SET", "k", "v") == refused)
        #expect(harness.handler.handleImmediately(["SET", "k", "w"].map { ByteBuffer(string: $0) }, session: &harness.session)?.value == refused)
        #expect(await harness.handler.handle(batch: [(["SET", "k", "1"], nil), (["SET", "j", "2"], nil)].map {
            ($0.0.map { ByteBuffer(string: $0) }, $0.1)
        }, session: &harness.session).map(\.value) == [refused, refused])   // not run together as an MSET either
        #expect(await harness.run("Exec") == .error("EXECABORT Transaction discarded: Strata runs no MULTI/EXEC transactions"))
        #expect(await harness.run("GET", "k") == .null && harness.backend.pairSets.isEmpty)
        #expect(await harness.run("MULTI") == .error(RESPCommandHandler.noTransactions))
        #expect(await harness.run("DISCARD") == .ok)
        #expect(await harness.run("SET", "k", "v") == .ok)
        #expect(await harness.run("WATCH", "k") == .error(RESPCommandHandler.noWatch))
        #expect(await harness.run("GET", "k") == .bulk("v"))   // WATCH alone refuses nothing after it
        #expect(await harness.run("UNWATCH") == .ok)
        #expect(await harness.run("MULTI") == .error(RESPCommandHandler.noTransactions))
        #expect(await harness.run("MULTI") == .error("ERR MULTI calls can not be nested"))
        #expect(await harness.run("WATCH", "k") == .error("ERR WATCH inside MULTI is not allowed"))
        #expect(await harness.run("DISCARD") == .ok)
    }

    @Test func helloSwitchesTheProtocolOfEveryLaterReply() async {
        var harness = Harness()
        #expect(await harness.reply(["GET", "k"]).resp3 == false)
        let hello = await harness.reply(["HELLO", "3"])
        #expect(hello.resp3 && harness.session.resp3)   // HELLO 3 is answered in RESP3
        guard case .map(let fields) = hello.value, fields.count == 14 else {
            Issue.record("HELLO's reply is a map of seven fields: \(hello.value)")
            return
        }
        #expect(fields[4] == .bulk("proto") && fields[5] == .integer(3))
        #expect(await harness.reply(["MGET", "k", "j"]).resp3)
        #expect(harness.handler.handleImmediately([ByteBuffer(string: "GET"), ByteBuffer(string: "k")], session: &harness.session)?.resp3 == true)
        #expect(await harness.run("HELLO", "4") == .error("NOPROTO sorry, this protocol version is not supported"))
        #expect(harness.session.resp3)   // a refused HELLO changes nothing
        #expect(await harness.run("HELLO", "3", "SETNAME") == .error("ERR Syntax error in HELLO option 'SETNAME'"))
        #expect(harness.session.resp3 && harness.session.clientName == nil)
        let back = await harness.reply(["HELLO", "2"])
        #expect(!back.resp3 && !harness.session.resp3)
        #expect(await harness.reply(["GET", "k"]).resp3 == false)
    }

    @Test func helloWithAuthChangesNothingUnlessTheCredentialsHold() async {
        var harness = Harness(users: [RESPUser(password: "s3cret", namespace: "team-x")])
        #expect(await harness.run("HELLO", "3", "AUTH", "default", "wrong", "SETNAME", "x")
            == .error("WRONGPASS invalid username-password pair or user is disabled."))
        #expect(!harness.session.resp3 && !harness.session.isAuthenticated && harness.session.clientName == nil)
        #expect(await harness.run("HELLO", "3", "AUTH", "default", "s3cret", "BOGUS")
            == .error("ERR Syntax error in HELLO option 'BOGUS'"))
        #expect(!harness.session.resp3 && !harness.session.isAuthenticated)
        #expect(await harness.run("HELLO", "3").isNoAuth)
        #expect(!harness.session.resp3)
        let hello = await harness.reply(["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "x"])
        #expect(hello.resp3 && harness.session.isAuthenticated && harness.session.namespace == "team-x")
        #expect(harness.session.clientName == "x")
    }

    @Test func resp3WritesNullsAndMapsItsOwnWay() {
        func wire(_ value: RESPValue, resp3: Bool) -> String {
            var buffer = ByteBuffer()
            RESPEncoder.encode(value, resp3: resp3, into: &buffer)
            return String(buffer: buffer)
        }
        let map = RESPValue.map([.bulk("a"), .integer(1), .bulk("b"), .null])
        #expect(wire(.null, resp3: false) == "$-1\r\n" && wire(.null, resp3: true) == "_\r\n")
        #expect(wire(.nullArray, resp3: false) == "*-1\r\n" && wire(.nullArray, resp3: true) == "_\r\n")
        #expect(wire(map, resp3: false) == "*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$-1\r\n")
        #expect(wire(map, resp3: true) == "%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n_\r\n")
        #expect(wire(.array([.bulk("x"), .null]), resp3: true) == "*2\r\n$1\r\nx\r\n_\r\n")
    }

    @Test func aValueInPiecesIsWrittenAsOneBulkString() {
        let small = ByteBuffer(string: "head:")
        let large = ByteBuffer(repeating: 0x41, count: RESPEncoder.zeroCopyThreshold)
        let tail = ByteBuffer(string: "tail")
        let whole = String(buffer: small) + String(buffer: large) + String(buffer: tail)
        for resp3 in [false, true] {
            // copied: the same bytes as the joined value
            var copied = ByteBuffer()
            RESPEncoder.encode(.bulkPieces([small, large, tail]), resp3: resp3, into: &copied)
            #expect(String(buffer: copied) == "$\(whole.utf8.count)\r\n\(whole)\r\n")
            // handed on: the large piece uncopied, in its place between the others
            var emitted = ""
            var out = ByteBuffer()
            RESPEncoder.encode(.bulkPieces([small, large, tail]), resp3: resp3, into: &out) { out, payload in
                emitted += String(buffer: out) + "|" + String(buffer: payload) + "|"
                out.clear()
            }
            emitted += String(buffer: out)
            #expect(emitted == "$\(whole.utf8.count)\r\nhead:|\(String(buffer: large))|tail\r\n")
        }
        #expect(RESPValue.bulk(pieces: [small]) == .bulkString(small))
        #expect(RESPValue.bulk(pieces: [small, tail]) == .bulkPieces([small, tail]))
    }

    @Test func authFlow() async {
        var harness = Harness(users: [
            RESPUser(password: "s3cret", namespace: "team-x"),
            RESPUser(name: "lmcache", password: "pw", namespace: "team-y"),
        ])
        #expect(await harness.run("PING") == .error("NOAUTH Authentication required."))
        #expect(await harness.run("GET", "k") == .error("NOAUTH Authentication required."))
        #expect(await harness.run("FOO") == .error("ERR unknown command 'FOO', with args beginning with: "))
        #expect(await harness.run("GET") == .error("ERR wrong number of arguments for 'get' command"))
        for command in ["MULTI", "exec", "Discard", "WATCH", "UNWATCH"] {   // commands Redis knows: NOAUTH, not "unknown"
            #expect(await harness.run(command) == .error("NOAUTH Authentication required."))
            #expect(harness.handler.handleImmediately([ByteBuffer(string: command)], session: &harness.session)?.value
                == .error("NOAUTH Authentication required."))
        }
        #expect(!harness.session.refusingTransaction)
        #expect(await harness.run("AUTH", "wrong") == .error("WRONGPASS invalid username-password pair or user is disabled."))
        #expect(await harness.run("AUTH", "lmcache", "s3cret") == .error("WRONGPASS invalid username-password pair or user is disabled."))
        #expect(await harness.run("AUTH", "a", "b", "c") == .error("ERR syntax error"))
        #expect(await harness.reply(["QUIT"]).closesConnection)
        #expect(await harness.run("AUTH", "s3cret") == .ok)
        #expect(harness.session.namespace == "team-x")
        #expect(await harness.run("SET", "k", "x") == .ok)
        #expect(await harness.run("AUTH", "lmcache", "pw") == .ok)
        #expect(harness.session.namespace == "team-y")
        #expect(await harness.run("GET", "k") == .null)  // namespaces are isolated
        #expect(await harness.run("DBSIZE") == .integer(0))
        #expect(await harness.run("AUTH", "default", "s3cret") == .ok)
        #expect(await harness.run("GET", "k") == .bulk("x"))
    }

    @Test func infoHasTheSectionsClientsParse() async throws {
        var harness = Harness()
        _ = await harness.run("SET", "a", "1")
        _ = await harness.run("SET", "b", "2", "EX", "100")
        guard case .bulkString(let body) = await harness.run("INFO") else {
            Issue.record("INFO is not a bulk string")
            return
        }
        let text = String(buffer: body)
        for line in ["# Server\r\n", "redis_version:", "# Memory\r\n", "used_memory:1234\r\n", "# Stats\r\n",
            "total_commands_processed:", "# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\n", "# Strata\r\ntiers:fake\r\n"]
        {
            #expect(text.contains(line), "missing \(line)")
        }
        guard case .bulkString(let keyspace) = await harness.run("INFO", "keyspace") else { return }
        #expect(String(buffer: keyspace) == "# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\n")
        guard case .bulkString(let memory) = await harness.run("info", "MEMORY") else { return }
        #expect(String(buffer: memory) == "# Memory\r\nused_memory:1234\r\nmem_clients_normal:0\r\n")
    }

    @Test func commandListsEveryCommandWithAValidShape() async {
        var harness = Harness()
        guard case .array(let entries) = await harness.run("COMMAND") else {
            Issue.record("COMMAND is not an array")
            return
        }
        #expect(entries.count == 28)
        for entry in entries {
            guard case .array(let fields) = entry, fields.count == 6, case .bulkString = fields[0],
                case .integer = fields[1], case .array = fields[2]
            else {
                Issue.record("bad entry \(entry)")
                continue
            }
        }
    }

    @Test func backendErrorsBecomeErrorReplies() async {
        struct Failing: KVBackend {
            func now() -> KVTimestamp { KVTimestamp(unixMilliseconds: 0) }
            func get(namespace: String, key: ByteBuffer) async throws -> ByteBuffer? {
                throw KVBackendError(.unavailable, "tier offline")
            }
            func set(namespace: String, key: ByteBuffer, value: ByteBuffer, condition: KVSetCondition, expiry: KVExpiry) async throws -> Bool {
                throw KVBackendError(.outOfSpace, "command not allowed when used memory > 'maxmemory'.")
            }
            func set(namespace: String, pairs: [(key: ByteBuffer, value: ByteBuffer)]) async throws {
                struct Opaque: Error {}
                throw Opaque()
            }
            func delete(namespace: String, keys: [ByteBuffer]) async throws -> Int { 0 }
            func exists(namespace: String, keys: [ByteBuffer]) async throws -> Int { 0 }
            func timeToLive(namespace: String, key: ByteBuffer) async throws -> KVTimeToLive { .missing }
            func expire(namespace: String, key: ByteBuffer, at deadline: KVTimestamp?) async throws -> Bool { false }
            func keyCount(namespace: String) async throws -> KVKeyCount { KVKeyCount(keys: 0, expiring: 0) }
            func flush(namespace: String) async throws {}
            func scan(namespace: String, cursor: UInt64, match: ByteBuffer?, count: Int) async throws -> KVScanPage {
                KVScanPage(cursor: 0, keys: [])
            }
            func info() async -> [(section: String, fields: [(String, String)])] { [] }
        }
        let handler = RESPCommandHandler(backend: Failing())
        var session = handler.makeSession(clientID: 1)
        let cases: [([String], RESPValue)] = [
            (["GET", "k"], .error("ERR tier offline")),
            (["MGET", "k", "j"], .error("ERR tier offline")),
            (["SET", "k", "v"], .error("OOM command not allowed when used memory > 'maxmemory'.")),
            (["MSET", "k", "v"], .error("ERR internal error")),
        ]
        for (words, expected) in cases {
            let reply = await handler.handle(words.map { ByteBuffer(string: $0) }, session: &session)
            #expect(reply.value == expected)
        }
    }
}
