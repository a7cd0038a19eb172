namespace Weft.Hbone.Internal.Hpack;

/// <summary>A header block that cannot be decoded: a COMPRESSION_ERROR for the connection.</summary>
internal sealed class HpackException(string message) : Exception(message);

/// <summary>A header list over SETTINGS_MAX_HEADER_LIST_SIZE: the connection is closed rather than decoded further.</summary>
internal sealed class HeaderListTooLargeException(int limit) : Exception($"header list larger than {limit} bytes");
