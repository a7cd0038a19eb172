using System.Collections.Frozen;
using System.Collections.Immutable;
using System.Net;
using System.Text;

namespace Weft.Inventory;

/// <summary>
/// Makes equal values of one build share one instance: namespaces, service accounts, node names, label keys and
/// values, whole label sets (the pods of one ReplicaSet carry the same labels), addresses and the node
/// address lists of every pod on a node. At 100,000 pods that is most of a snapshot's memory: each
/// deserialized object brings its own copy of every string. An incremental inventory keeps its pool and replaces it when it outgrows the live objects
/// (churn leaves names behind), so its size stays bounded.
/// </summary>
internal sealed class InternPool
{
    private static readonly IReadOnlyDictionary<string, string> NoLabels = FrozenDictionary<string, string>.Empty;

    // A set, not a map to itself: it finds the held instance as well, with a smaller entry per string.
    private readonly HashSet<string> _strings = new(StringComparer.Ordinal);

    // Each address with the one-element list of it, so a single-stack pod's address list costs nothing of its own.
    private readonly Dictionary<IPAddress, ImmutableArray<IPAddress>> _addresses = [];
    private readonly Dictionary<string, IReadOnlyDictionary<string, string>> _labelSets = new(StringComparer.Ordinal);
    private readonly Dictionary<(IPAddress, IPAddress?), ImmutableArray<IPAddress>> _addressLists = [];
    private readonly StringBuilder _labelKey = new();

    /// <summary>Entries held; a long-lived owner starts a new pool when this grows far past what is live.</summary>
    public int Count => _strings.Count + _addresses.Count + _labelSets.Count + _addressLists.Count;

    public string String(string value)
    {
        if (_strings.TryGetValue(value, out var shared))
        {
            return shared;
        }

        _strings.Add(value);
        return value;
    }

    public string? OptionalString(string? value) => value is null ? null : String(value);

    public IPAddress Address(IPAddress address) => SingleAddress(address)[0];

    /// <summary>The list of this one address, the same instance for every pod and endpoint that has it.</summary>
    public ImmutableArray<IPAddress> SingleAddress(IPAddress address)
    {
        if (_addresses.TryGetValue(address, out var shared))
        {
            return shared;
        }

        shared = [address];
        _addresses[address] = shared;
        return shared;
    }

    /// <summary>A list of one or two addresses (a pod's node, dual stack at most), shared by every pod that lists the same.</summary>
    public ImmutableArray<IPAddress> Addresses(ImmutableArray<IPAddress> addresses)
    {
        if (addresses.Length is 0 or > 2)
        {
            return addresses;
        }

        if (addresses.Length == 1)
        {
            return SingleAddress(addresses[0]);
        }

        var key = (addresses[0], addresses.Length == 2 ? addresses[1] : null);
        if (_addressLists.TryGetValue(key, out var shared))
        {
            return shared;
        }

        var interned = addresses.Select(Address).ToImmutableArray();
        _addressLists[key] = interned;
        return interned;
    }

    /// <summary>An immutable copy of the labels, the same instance for every equal set.</summary>
    public IReadOnlyDictionary<string, string> Labels(IDictionary<string, string>? labels)
    {
        if (labels is not { Count: > 0 })
        {
            return NoLabels;
        }

        // Keys sorted, each pair length-prefixed: two different sets never make the same key.
        _labelKey.Clear();
        foreach (var (key, value) in labels.OrderBy(l => l.Key, StringComparer.Ordinal))
        {
            _labelKey.Append(key.Length).Append(':').Append(key).Append(value?.Length ?? -1).Append(':').Append(value);
        }

        var setKey = _labelKey.ToString();
        if (_labelSets.TryGetValue(setKey, out var shared))
        {
            return shared;
        }

        var set = labels.Where(l => l.Value is not null)
            .ToFrozenDictionary(l => String(l.Key), l => String(l.Value), StringComparer.Ordinal);
        _labelSets[setKey] = set;
        return set;
    }
}
