/// One version of a remote object, as `stat` found it.
public struct RemoteObject: Sendable, Equatable {
    public var location: RemoteLocation
    public var size: UInt64
    /// As the server sent it, quotes (and any W/) kept: it goes back verbatim in If-Match.
    public var etag: String?
    public var lastModified: String?
    /// Names this version: equal identities mean a stored copy is still current.
    public var identity: String

    public init(location: RemoteLocation, size: UInt64, etag: String?, lastModified: String?, identity: String? = nil) {
        self.location = location
        self.size = size
        self.etag = etag
        self.lastModified = lastModified
        self.identity = identity ?? Self.identity(location: location, size: size, etag: etag, version: lastModified)
    }

    /// url + size + (etag, else the modification time): an ETag alone is not enough, a server may
    /// reuse one across paths, and the size catches a truncated rewrite with the same mtime.
    static func identity(location: RemoteLocation, size: UInt64, etag: String?, version: String?) -> String {
        var text = "\(location) size=\(size)"
        if let etag { text += " etag=\(etag)" } else if let version { text += " mtime=\(version)" }
        return text
    }
}
