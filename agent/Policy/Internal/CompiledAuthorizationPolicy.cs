namespace Weft.Policy.Internal;

internal enum PolicyAction : byte
{
    Allow,
    Deny,
}

/// <summary>
/// An AuthorizationPolicy after validation: labels to select workloads by, and rules made of pre-parsed matchers, so
/// evaluating it walks arrays and compares spans without allocating.
/// </summary>
internal sealed class CompiledAuthorizationPolicy
{
    public CompiledAuthorizationPolicy(string @namespace, string name, PolicyAction action, KeyValuePair<string, string>[]? selector, CompiledRule[] rules)
    {
        Namespace = @namespace;
        Name = name;
        Action = action;
        Selector = selector;
        Rules = rules;
        Key = $"{@namespace}/{name}";
        MatchedReason = action == PolicyAction.Deny ? $"denied by {Key}" : $"allowed by {Key}";
    }

    public string Namespace { get; }

    public string Name { get; }

    /// <summary>"namespace/name", as decisions name it.</summary>
    public string Key { get; }

    public PolicyAction Action { get; }

    /// <summary>matchLabels; null selects every workload in scope.</summary>
    public KeyValuePair<string, string>[]? Selector { get; }

    /// <summary>Empty: the policy matches nothing (an ALLOW then allows nothing).</summary>
    public CompiledRule[] Rules { get; }

    public string MatchedReason { get; }

    public bool Selects(IReadOnlyDictionary<string, string> labels) => LabelSelector.Matches(Selector, labels);

    public bool Matches(in Peer peer)
    {
        foreach (var rule in Rules)
        {
            if (rule.Matches(peer))
            {
                return true;
            }
        }

        return false;
    }
}

/// <summary>One rule: some source and some operation must match; null lists match anything.</summary>
internal sealed class CompiledRule(CompiledSource[]? from, CompiledOperation[]? to, bool neverMatches = false)
{
    public static CompiledRule MatchAll { get; } = new(null, null);

    public bool Matches(in Peer peer)
    {
        if (neverMatches)
        {
            return false;
        }

        if (from is not null)
        {
            var any = false;
            foreach (var source in from)
            {
                if (source.Matches(peer))
                {
                    any = true;
                    break;
                }
            }

            if (!any)
            {
                return false;
            }
        }

        if (to is not null)
        {
            foreach (var operation in to)
            {
                if (operation.Matches(peer))
                {
                    return true;
                }
            }

            return false;
        }

        return true;
    }
}

/// <summary>A source: every set field must hold (ANDed), as in Istio.</summary>
internal sealed class CompiledSource
{
    public StringPattern[]? Principals { get; init; }
    public StringPattern[]? NotPrincipals { get; init; }
    public StringPattern[]? Namespaces { get; init; }
    public StringPattern[]? NotNamespaces { get; init; }
    public IpBlock[]? IpBlocks { get; init; }
    public IpBlock[]? NotIpBlocks { get; init; }

    public bool Matches(in Peer peer) =>
        (Principals is null || StringPattern.AnyMatches(Principals, peer.Principal))
        && (NotPrincipals is null || !StringPattern.AnyMatches(NotPrincipals, peer.Principal))
        && (Namespaces is null || StringPattern.AnyMatches(Namespaces, peer.Namespace))
        && (NotNamespaces is null || !StringPattern.AnyMatches(NotNamespaces, peer.Namespace))
        && (IpBlocks is null || IpBlock.AnyContains(IpBlocks, peer.Source))
        && (NotIpBlocks is null || !IpBlock.AnyContains(NotIpBlocks, peer.Source));
}

/// <summary>An operation at L4: destination ports.</summary>
internal sealed class CompiledOperation
{
    public int[]? Ports { get; init; }
    public int[]? NotPorts { get; init; }

    public bool Matches(in Peer peer) =>
        (Ports is null || Array.IndexOf(Ports, peer.Port) >= 0)
        && (NotPorts is null || Array.IndexOf(NotPorts, peer.Port) < 0);
}

/// <summary>A compiled PeerAuthentication; a null mode is UNSET and inherits from the wider scope.</summary>
internal sealed record CompiledPeerAuthentication(string Namespace, string Name, KeyValuePair<string, string>[]? Selector, MtlsMode? Mode)
{
    public bool Selects(IReadOnlyDictionary<string, string> labels) => LabelSelector.Matches(Selector, labels);
}

internal static class LabelSelector
{
    /// <summary>matchLabels: every pair present on the workload with the same value.</summary>
    public static bool Matches(KeyValuePair<string, string>[]? selector, IReadOnlyDictionary<string, string> labels)
    {
        if (selector is null)
        {
            return true;
        }

        foreach (var (key, value) in selector)
        {
            if (!labels.TryGetValue(key, out var actual) || !string.Equals(actual, value, StringComparison.Ordinal))
            {
                return false;
            }
        }

        return true;
    }
}
