namespace Weft.Hbone.Internal.Hpack;

/// <summary>RFC 7541 Appendix A, 1-based as on the wire.</summary>
internal static class HpackStaticTable
{
    public const int Count = 61;

    private static readonly (string Name, string Value)[] Entries =
    [
        (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
        (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
        (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
        ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""), ("cache-control", ""),
        ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
        ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""), ("date", ""),
        ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""), ("if-match", ""),
        ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""), ("if-unmodified-since", ""),
        ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""), ("proxy-authenticate", ""),
        ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""),
        ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
        ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
    ];

    public static (string Name, string Value) Get(int index) => Entries[index - 1];

    /// <summary>Index of an exact (name, value) match, else of the first entry with the name, else 0.</summary>
    public static int Find(string name, string value, out bool valueMatches)
    {
        int nameIndex = 0;
        for (int i = 0; i < Entries.Length; i++)
        {
            if (Entries[i].Name == name)
            {
                if (Entries[i].Value == value)
                {
                    valueMatches = true;
                    return i + 1;
                }
                if (nameIndex == 0)
                {
                    nameIndex = i + 1;
                }
            }
        }
        valueMatches = false;
        return nameIndex;
    }
}
