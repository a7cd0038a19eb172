namespace Weft.Harness;

/// <summary>A netns cluster could not be built, used or torn down; the message names the step and the cause.</summary>
internal sealed class HarnessException : Exception
{
    public HarnessException(string message)
        : base(message)
    {
    }

    public HarnessException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>The run the failure belongs to, when a cluster had been started.</summary>
    public string? RunId { get; init; }
}
