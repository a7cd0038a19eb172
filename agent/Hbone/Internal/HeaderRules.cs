namespace Weft.Hbone.Internal;

/// <summary>
/// What makes a CONNECT request or its response well-formed (RFC 9113 sections 8.2, 8.3, 8.5).
/// Each check returns a reason, or null when the fields are fine.
/// </summary>
internal static class HeaderRules
{
    private static readonly HashSet<string> ConnectionSpecific =
        ["connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"];

    public static string? ValidateConnectRequest(List<KeyValuePair<string, string>> fields, out string authority, out List<KeyValuePair<string, string>> regular)
    {
        authority = "";
        regular = [];
        string? method = null;
        bool sawAuthority = false;
        foreach (var (name, value) in fields)
        {
            if (name.StartsWith(':'))
            {
                if (regular.Count > 0)
                {
                    return "pseudo-header after a regular field";
                }
                switch (name)
                {
                    case ":method":
                        if (method is not null)
                        {
                            return "duplicate :method";
                        }

                        method = value;
                        break;
                    case ":authority":
                        if (sawAuthority)
                        {
                            return "duplicate :authority";
                        }

                        sawAuthority = true;
                        authority = value;
                        break;
                    case ":scheme":
                    case ":path":
                    case ":protocol":
                        return $"CONNECT must not carry {name}";
                    default:
                        return $"unknown pseudo-header {name}";
                }
                continue;
            }
            string? problem = ValidateField(name, value);
            if (problem is not null)
            {
                return problem;
            }
            regular.Add(new KeyValuePair<string, string>(name, value));
        }
        if (method != "CONNECT")
        {
            return $"method {method ?? "(none)"} is not CONNECT";
        }
        if (string.IsNullOrEmpty(authority))
        {
            return "CONNECT without :authority";
        }
        return null;
    }

    public static string? ValidateResponse(List<KeyValuePair<string, string>> fields, out int status)
    {
        status = 0;
        bool sawRegular = false;
        bool sawStatus = false;
        foreach (var (name, value) in fields)
        {
            if (name.StartsWith(':'))
            {
                if (sawRegular)
                {
                    return "pseudo-header after a regular field";
                }

                if (name != ":status")
                {
                    return $"unexpected pseudo-header {name} in a response";
                }

                if (sawStatus)
                {
                    return "duplicate :status";
                }

                sawStatus = true;
                if (value.Length != 3 || !int.TryParse(value, System.Globalization.NumberStyles.None, null, out status))
                {
                    return $"malformed :status '{value}'";
                }
                continue;
            }
            sawRegular = true;
            string? problem = ValidateField(name, value);
            if (problem is not null)
            {
                return problem;
            }
        }
        return sawStatus ? null : "response without :status";
    }

    /// <summary>A field the application wants to send: same rules as on receipt, and no pseudo-headers.</summary>
    public static string? ValidateOutgoingField(string name, string value) =>
        name.StartsWith(':') ? $"pseudo-header {name} cannot be set" : ValidateField(name, value);

    private static string? ValidateField(string name, string value)
    {
        if (name.Length == 0)
        {
            return "empty field name";
        }
        foreach (char c in name)
        {
            // Lowercase token characters only (RFC 9110 tchar, uppercase forbidden in HTTP/2).
            bool ok = c is >= 'a' and <= 'z' or >= '0' and <= '9' ||
                      "!#$%&'*+-.^_`|~".Contains(c);
            if (!ok)
            {
                return $"invalid character in field name '{name}'";
            }
        }
        if (ConnectionSpecific.Contains(name))
        {
            return $"connection-specific field {name}";
        }
        if (name == "te" && value != "trailers")
        {
            return "te other than trailers";
        }
        foreach (char c in value)
        {
            if (c is '\0' or '\r' or '\n' || c > '\u00ff')
            {
                return $"invalid character in the value of {name}";
            }
        }
        if (value.Length > 0 && (value[0] is ' ' or '\t' || value[^1] is ' ' or '\t'))
        {
            return $"whitespace around the value of {name}";
        }
        return null;
    }
}
