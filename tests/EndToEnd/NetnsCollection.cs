namespace Weft.Tests.EndToEnd;

/// <summary>End-to-end clusters run one at a time: each starts several processes on a 2-core machine.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class NetnsCollection
{
    public const string Name = "netns cluster";
}
